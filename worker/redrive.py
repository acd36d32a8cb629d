"""Re-drive failed tickets: publish the failure table's tickets again (`triage redrive`).

A failure row keeps the message as received (``payload``) and the task's mode, so the
ticket goes back on the queue unchanged. What happens to the row:

- **published**: the row stays, marked ``redriven_at`` (``redrive_count`` + 1), until the
  worker decides the ticket (the row is then deleted in the decision's transaction) or it
  fails again (the row is rewritten with the new reason, no longer marked). Every re-drive
  also appends a ``triage_redrives`` row: the audit trail outlives the failure row.
- **already decided**: a stale failure row of a decided ticket; removed (and audited),
  nothing published: a ticket never gets a second decision.
- **unavailable**: neither the payload nor ``triage_tickets`` holds a valid ticket; the row
  is left untouched and reported, never skipped in silence.

Rows already marked re-driven (in flight) are left alone unless ``include_pending``: a
second run does not publish the same tickets twice (the worker's writes would absorb it
anyway: a ticket is decided once).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from tickets import db
from tickets.errors import InvalidTicket
from tickets.model import Ticket, TicketKey

Mode = Literal["route", "backfill"]
#: Publishes tickets in one mode; yields each once the broker has it (tickets.queue.publish).
Publisher = Callable[[Iterable[Ticket], Mode], Iterator[Ticket]]

Status = Literal["published", "would publish", "already decided", "unavailable"]


@dataclass(frozen=True)
class RedriveItem:
    key: TicketKey
    error_type: str
    reason: str
    mode: str
    status: Status
    detail: str = ""


@dataclass
class RedriveReport:
    items: list[RedriveItem] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for item in self.items if item.status == status)

    @property
    def unavailable(self) -> list[RedriveItem]:
        return [item for item in self.items if item.status == "unavailable"]


_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``30m``, ``2h``, ``7d`` (ago), or an ISO 8601 date or time (naive = UTC)."""
    now = now or datetime.now(UTC)
    text = value.strip()
    match = _DURATION.match(text)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {value!r}: use a duration (30m, 2h, 7d) or an ISO date/time "
            "(2026-11-27 or 2026-11-27T08:00:00+00:00)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def select_failures(
    session: Session,
    *,
    source: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    include_pending: bool = False,
) -> list[db.FailureRow]:
    """Failure rows matching the filters, oldest failure first."""
    query = select(db.FailureRow).order_by(db.FailureRow.failed_at, db.FailureRow.id)
    if source is not None:
        query = query.where(db.FailureRow.source == source)
    if reason:
        # A substring of the reason or the error type, case-insensitive, bound as a parameter.
        pattern = f"%{reason.lower()}%"
        query = query.where(
            db.FailureRow.reason.ilike(pattern) | db.FailureRow.error_type.ilike(pattern)
        )
    if since is not None:
        query = query.where(db.FailureRow.failed_at >= since)
    if not include_pending:
        query = query.where(db.FailureRow.redriven_at.is_(None))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def _ticket_of(row: db.FailureRow, stored: db.TicketRow | None) -> tuple[Ticket | None, str]:
    """The ticket to publish again: the payload as received, else the stored ticket row."""
    try:
        return Ticket.from_message(row.payload), ""
    except InvalidTicket as exc:
        problem = f"payload is not a valid ticket ({exc})"
    if stored is None:
        return None, f"{problem}, and triage_tickets has no row for it"
    try:
        return Ticket(
            source=stored.source,
            ticket_id=stored.ticket_id,
            subject=stored.subject,
            body=stored.body,
            body_format=stored.body_format,
            queue=stored.queue,
            tags=tuple(stored.tags or ()),
            created_at=stored.created_at,
            received_at=stored.received_at,
        ), ""
    except ValueError as exc:
        return None, f"{problem}, and its triage_tickets row is not valid either ({exc})"


def redrive(
    engine: Engine,
    publish: Publisher,
    *,
    source: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    include_pending: bool = False,
) -> RedriveReport:
    """Publish the matching failed tickets again; see the module docstring."""
    report = RedriveReport()
    now = datetime.now(UTC)
    with Session(engine, expire_on_commit=False) as session:
        rows = select_failures(
            session,
            source=source,
            reason=reason,
            since=since,
            limit=limit,
            include_pending=include_pending,
        )
        keys = [TicketKey(r.source, r.ticket_id) for r in rows]
        decided = _decided(session, keys)
        stored = db.tickets_by_key(session, keys)

        to_publish: list[tuple[db.FailureRow, Ticket]] = []
        stale: list[db.FailureRow] = []
        for row, key in zip(rows, keys, strict=True):

            def item(status: Status, detail: str = "", row: db.FailureRow = row) -> RedriveItem:
                return RedriveItem(
                    TicketKey(row.source, row.ticket_id),
                    row.error_type,
                    row.reason,
                    row.mode,
                    status,
                    detail,
                )

            if key in decided:
                stale.append(row)
                report.items.append(item("already decided", "failure row removed"))
                continue
            ticket, problem = _ticket_of(row, stored.get(key))
            if ticket is None:
                report.items.append(item("unavailable", problem))
                continue
            to_publish.append((row, ticket))
            report.items.append(item("would publish" if dry_run else "published"))
        if dry_run:
            return report

        # Mark and audit first, then publish: a worker that fails the ticket again right
        # after the publish rewrites the row unmarked, and that must win over our mark.
        for row in stale:
            session.add(_audit(row, now, "already decided"))
        if stale:
            session.execute(
                delete(db.FailureRow).where(db.FailureRow.id.in_([r.id for r in stale]))
            )
        before = {row.id: row.redriven_at for row, _ in to_publish}
        audits = {row.id: _audit(row, now, "published") for row, _ in to_publish}
        session.add_all(audits.values())
        _mark(session, list(before), now, +1)
        session.commit()

        published: set[TicketKey] = set()
        try:
            for mode in ("route", "backfill"):
                batch = [t for row, t in to_publish if (row.mode or "route") == mode]
                for ticket in publish(batch, mode):  # type: ignore[arg-type]
                    published.add(ticket.key)
        finally:
            unsent = [row.id for row, t in to_publish if t.key not in published]
            if unsent:
                # The broker refused part of it: those rows stay as they were, unaudited.
                for row_id in unsent:
                    _mark(session, [row_id], before[row_id], -1)
                session.execute(
                    delete(db.RedriveRow).where(
                        db.RedriveRow.id.in_([audits[i].id for i in unsent])
                    )
                )
                session.commit()
    return report


def _decided(session: Session, keys: list[TicketKey]) -> set[TicketKey]:
    if not keys:
        return set()
    rows = session.execute(
        select(db.DecisionRow.source, db.DecisionRow.ticket_id).where(
            db.key_filter(db.DecisionRow, keys)
        )
    )
    return {TicketKey(source, ticket_id) for source, ticket_id in rows}


def _audit(row: db.FailureRow, now: datetime, outcome: str) -> db.RedriveRow:
    return db.RedriveRow(
        source=row.source,
        ticket_id=row.ticket_id,
        error_type=row.error_type,
        reason=row.reason,
        attempts=row.attempts,
        failed_at=row.failed_at,
        redriven_at=now,
        outcome=outcome,
    )


def _mark(session: Session, ids: list[int], when: datetime | None, step: int) -> None:
    if ids:
        session.execute(
            update(db.FailureRow)
            .where(db.FailureRow.id.in_(ids))
            .values(redriven_at=when, redrive_count=db.FailureRow.redrive_count + step)
            .execution_options(synchronize_session=False)
        )
