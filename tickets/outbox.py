"""The outbox: actions a decision must cause outside, as rows of ``triage_actions``.

A row is inserted in the same SQL transaction as its decision (``stage``), so a decision is
never committed without its actions, nor an action without its decision. Each row then
lives through these states (all transitions are conditional UPDATEs, safe against a
concurrent worker or sweeper):

- ``pending``: committed, waiting to be sent. A delivery task claims it (``claim``); if no
  task does before ``next_attempt_at`` (its message was never published, or was lost), the
  sweeper publishes it again.
- ``sending``: claimed by a task until ``next_attempt_at`` (the lease). A worker killed
  mid-delivery leaves it so; once the lease has passed the sweeper makes it ``pending``
  again and the action is sent again, with the same id.
- ``failed``: the last attempt failed and will be retried at ``next_attempt_at``.
- ``delivered``, ``dead`` (a permanent refusal, or out of attempts: `triage actions
  --redrive` makes it ``pending`` again), ``dry-run`` (recorded, never sent): final.

``action_id`` is the action's idempotency id (for a webhook, the Standard Webhooks
``webhook-id``): fixed at insert, the same on every attempt. ``(kind, target, source,
ticket_id)`` is unique: a decision's action is never queued twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from tickets.db import Base, _BigId, dialect_insert

PENDING, SENDING, FAILED = "pending", "sending", "failed"
DELIVERED, DEAD, DRY_RUN = "delivered", "dead", "dry-run"
STATUSES = (PENDING, SENDING, FAILED, DELIVERED, DEAD, DRY_RUN)
# Not final: the sweeper looks at these when their next_attempt_at has come.
OPEN = (PENDING, SENDING, FAILED)
# Longest excerpt of a receiver's answer kept in last_error.
ERROR_EXCERPT = 500


class ActionRow(Base):
    __tablename__ = "triage_actions"
    __table_args__ = (
        UniqueConstraint("action_id", name="uq_triage_actions_action_id"),
        UniqueConstraint(
            "kind", "target", "source", "ticket_id", name="uq_triage_actions_decision"
        ),
        Index("ix_triage_actions_due", "status", "next_attempt_at"),
        # A purge (tickets/purge.py) finds a ticket's actions by key.
        Index("ix_triage_actions_key", "source", "ticket_id"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    action_id: Mapped[str] = mapped_column(String(64))
    # The decision's key: decisions are keyed by ticket, one per ticket.
    source: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[str] = mapped_column(String(255))
    # What to do ("webhook") and where (the URL, or a helpdesk's name).
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(1000))
    # What is sent: for a webhook, the decision as the read API returns it.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The receiver's HTTP status of the last attempt; null when it never answered.
    last_status: Mapped[int | None] = mapped_column(Integer)
    # Why the last attempt failed: the receiver's status and an excerpt of its body, or the
    # connection error.
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


_TABLE = ActionRow.__table__


def stage(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert action rows in the caller's transaction; one already queued for the same
    decision and target stays as it is."""
    if rows:
        insert = dialect_insert(session.get_bind().dialect.name)
        session.execute(
            insert(_TABLE).on_conflict_do_nothing(
                index_elements=["kind", "target", "source", "ticket_id"]
            ),
            list(rows),
        )


def restage(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert action rows, replacing the one queued for the same decision and target (a
    re-decided ticket's, worker/redecide.py): it is sent again, with the new decision and
    a new idempotency id, whatever state the earlier one reached."""
    if rows:
        insert = dialect_insert(session.get_bind().dialect.name)(_TABLE)
        replaced = ("action_id", "payload", "status", "attempts", "next_attempt_at", "created_at")
        cleared = ("last_attempt_at", "last_status", "last_error", "delivered_at")
        session.execute(
            insert.on_conflict_do_update(
                index_elements=["kind", "target", "source", "ticket_id"],
                set_={
                    **{c: insert.excluded[c] for c in replaced},
                    **dict.fromkeys(cleared),
                },
            ),
            list(rows),
        )


def claim(
    session: Session, action_id: str, now: datetime, lease_until: datetime
) -> ActionRow | None:
    """Take a pending action for one attempt (until ``lease_until``); None if it is not
    pending (delivered, taken by another task, waiting for its retry time)."""
    taken = session.execute(
        update(ActionRow)
        .where(ActionRow.action_id == action_id, ActionRow.status == PENDING)
        .values(
            status=SENDING,
            attempts=ActionRow.attempts + 1,
            next_attempt_at=lease_until,
            last_attempt_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.scalar(select(ActionRow).where(ActionRow.action_id == action_id))


def postpone(session: Session, action_id: str, until: datetime) -> None:
    """A pending action that must wait (its receiver asked every sender to): the sweeper
    publishes it again at ``until``."""
    session.execute(
        update(ActionRow)
        .where(ActionRow.action_id == action_id, ActionRow.status == PENDING)
        .values(next_attempt_at=until)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def settle(
    session: Session,
    action_id: str,
    attempt: int,
    *,
    status: str,
    next_attempt_at: datetime,
    last_status: int | None,
    last_error: str | None,
    delivered_at: datetime | None = None,
) -> bool:
    """Record the outcome of attempt number ``attempt``; False if that attempt no longer
    holds the action (its lease passed and another attempt took it). A delivery is recorded
    even then: it happened, whatever the other attempt meets."""
    holds = (ActionRow.status == SENDING) & (ActionRow.attempts == attempt)
    if status == DELIVERED:
        holds = holds | (ActionRow.status != DELIVERED)
    done = session.execute(
        update(ActionRow)
        .where(ActionRow.action_id == action_id, holds)
        .values(
            status=status,
            next_attempt_at=next_attempt_at,
            last_status=last_status,
            last_error=None if last_error is None else last_error[: ERROR_EXCERPT + 200],
            delivered_at=delivered_at,
        )
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def requeue_due(session: Session, now: datetime, grace_until: datetime, limit: int) -> list[str]:
    """Open actions whose time has come (a retry due, a lease passed, a publish missing),
    made ``pending`` again until ``grace_until``; their ids, to publish. On PostgreSQL the
    rows are locked with SKIP LOCKED, so concurrent sweeps never take the same rows."""
    due = list(
        session.scalars(
            select(ActionRow.action_id)
            .where(ActionRow.status.in_(OPEN), ActionRow.next_attempt_at <= now)
            .order_by(ActionRow.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if due:
        session.execute(
            update(ActionRow)
            .where(
                ActionRow.action_id.in_(due),
                ActionRow.status.in_(OPEN),
                ActionRow.next_attempt_at <= now,
            )
            .values(status=PENDING, next_attempt_at=grace_until)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return due


def redrive(
    session: Session, grace_until: datetime, action_ids: Iterable[str] | None = None
) -> list[str]:
    """Dead actions (all, or those of ``action_ids``) made pending again with a fresh run of
    attempts; their ids, to publish."""
    stmt = select(ActionRow.action_id).where(ActionRow.status == DEAD)
    if action_ids is not None:
        stmt = stmt.where(ActionRow.action_id.in_(list(action_ids)))
    ids = list(session.scalars(stmt))
    if ids:
        session.execute(
            update(ActionRow)
            .where(ActionRow.action_id.in_(ids), ActionRow.status == DEAD)
            .values(status=PENDING, attempts=0, next_attempt_at=grace_until)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return ids


def listing(session: Session, statuses: Sequence[str], limit: int) -> list[ActionRow]:
    """The most recent actions in these states, newest first."""
    return list(
        session.scalars(
            select(ActionRow)
            .where(ActionRow.status.in_(list(statuses)))
            .order_by(ActionRow.created_at.desc(), ActionRow.id.desc())
            .limit(limit)
        )
    )


def counts(session: Session) -> dict[tuple[str, str], int]:
    """Actions by (kind, status)."""
    rows = session.execute(
        select(ActionRow.kind, ActionRow.status, func.count()).group_by(
            ActionRow.kind, ActionRow.status
        )
    ).all()
    return {(str(kind), str(status)): int(n) for kind, status, n in rows}


def status_totals(session: Session) -> dict[str, int]:
    """Actions by status, every status present (0 when none)."""
    totals = dict.fromkeys(STATUSES, 0)
    for (_kind, status), n in counts(session).items():
        totals[status] = totals.get(status, 0) + n
    return totals
