"""Purges in SQL: erasing a ticket's text while its decision stays, and the tombstones that
tell every worker process what was erased.

Tables (migration 0013):

- ``triage_purges``: one row per erased ticket key, with an increasing ``id``. It is the
  tombstone each worker reads from its last seen id (worker/purge.py) to drop the keys
  from its lexical index, caches and vector store, and the list the write path checks so
  that a ticket erased while its message is queued or in a batch is never stored with its
  text afterwards. A key, never text.
- ``triage_purge_runs``: one audit row per purge: who asked, why (``erasure`` or
  ``retention``), the criterion, when, and how many rows of each kind were erased.

What erasing a key does here (:func:`erase`): the ticket row stays, as the place its id
holds in the id order that workers' catch-up relies on, with its text, tags, content hash
and kept vector emptied; the decision row stays with its ``subject`` emptied (routes,
scores and times keep the statistics true); failure rows are deleted (their payload is the
message); feedback comments are emptied; outbox actions lose the text fields of their
payload and the receiver's answer excerpt.

Order, and why it is safe while workers run: the tombstones are committed first, under an
exclusive lock that every worker write takes shared (:func:`guard`, PostgreSQL advisory
lock; SQLite has a single writer anyway), then the rows are erased. A worker's write either
committed before the tombstones (its rows are there to be erased) or runs after them and
erases its own rows for tombstoned keys in its own transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Integer,
    String,
    UniqueConstraint,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from tickets.db import (
    Base,
    DecisionRow,
    FailureRow,
    FeedbackRow,
    TicketRow,
    _BigId,
    dialect_insert,
    key_filter,
)
from tickets.model import TicketKey
from tickets.outbox import ActionRow

ERASURE, RETENTION = "erasure", "retention"
# Keys per SQL statement: bounded IN lists.
CHUNK = 500
# The PostgreSQL advisory lock a purge holds exclusively while it commits tombstones and a
# worker holds shared while it writes tickets: an arbitrary constant of this product.
_LOCK_KEY = 0x7472_6961_6765  # "triage"
# Text-bearing fields of an outbox action's payload.
_PAYLOAD_TEXT = ("subject", "body", "note", "comment", "text")


class PurgeRow(Base):
    __tablename__ = "triage_purges"
    __table_args__ = (UniqueConstraint("source", "ticket_id", name="uq_triage_purges_key"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[str] = mapped_column(String(255))
    run_id: Mapped[int] = mapped_column(BigInteger)
    purged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PurgeRunRow(Base):
    __tablename__ = "triage_purge_runs"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    requested_by: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(16))
    # What was asked: "key", or "older than <cutoff>" (never text).
    criterion: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    tickets: Mapped[int] = mapped_column(Integer, default=0)
    decisions: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    feedback: Mapped[int] = mapped_column(Integer, default=0)
    actions: Mapped[int] = mapped_column(Integer, default=0)
    # Messages removed from or rewritten in the broker's queue and the ledger.
    queued: Mapped[int] = mapped_column(Integer, default=0)


COUNTED = ("tickets", "decisions", "failures", "feedback", "actions")


def _exclusive(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})


def shared_lock(session: Session) -> int | None:
    """The advisory lock :func:`hold_shared` takes, for a statement that takes it with
    others (worker/decision_lock.py's fence check); None on SQLite."""
    return _LOCK_KEY if session.get_bind().dialect.name == "postgresql" else None


def hold_shared(session: Session) -> None:
    """Hold the purge lock shared until the caller's transaction ends: no tombstone commits
    until then, and every one committed before is seen by the statements that follow."""
    key = shared_lock(session)
    if key is not None:
        session.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": key})


def start_run(session: Session, requested_by: str, reason: str, criterion: str) -> int:
    row = PurgeRunRow(
        requested_by=requested_by[:200],
        reason=reason,
        criterion=criterion[:200],
        started_at=datetime.now(UTC),
        **dict.fromkeys(COUNTED, 0),
        queued=0,
    )
    session.add(row)
    session.flush()
    return int(row.id)


def finish_run(session: Session, run_id: int, counts: dict[str, int]) -> None:
    session.execute(
        update(PurgeRunRow)
        .where(PurgeRunRow.id == run_id)
        .values(finished_at=datetime.now(UTC), **counts)
    )


def tombstone(session: Session, keys: Sequence[TicketKey], run_id: int) -> None:
    """Record these keys as purged (a key purged before keeps its first tombstone). The
    caller commits: the exclusive lock is held until then."""
    if not keys:
        return
    _exclusive(session)
    now = datetime.now(UTC)
    insert = dialect_insert(session.get_bind().dialect.name)
    session.execute(
        insert(PurgeRow.__table__).on_conflict_do_nothing(index_elements=["source", "ticket_id"]),
        [
            {"source": k.source, "ticket_id": k.ticket_id, "run_id": run_id, "purged_at": now}
            for k in dict.fromkeys(keys)
        ],
    )


def erase(session: Session, keys: Sequence[TicketKey]) -> dict[str, int]:
    """Erase the text of these keys from every table; returns the rows changed per kind.
    Idempotent: rows already erased are not counted again."""
    counts = dict.fromkeys(COUNTED, 0)
    keys = list(dict.fromkeys(keys))
    for start in range(0, len(keys), CHUNK):
        part = keys[start : start + CHUNK]
        counts["tickets"] += _rowcount(
            session.execute(
                update(TicketRow)
                .where(
                    key_filter(TicketRow, part),
                    (TicketRow.body != "")
                    | TicketRow.subject.is_not(None)
                    | TicketRow.vector.is_not(None),
                )
                .values(
                    subject=None,
                    body="",
                    tags=[],
                    content_hash="",
                    vector=None,
                    indexed_at=func.coalesce(TicketRow.indexed_at, datetime.now(UTC)),
                )
                .execution_options(synchronize_session=False)
            )
        )
        counts["decisions"] += _rowcount(
            session.execute(
                update(DecisionRow)
                .where(key_filter(DecisionRow, part), DecisionRow.subject.is_not(None))
                .values(subject=None)
                .execution_options(synchronize_session=False)
            )
        )
        counts["failures"] += _rowcount(
            session.execute(
                delete(FailureRow)
                .where(key_filter(FailureRow, part))
                .execution_options(synchronize_session=False)
            )
        )
        counts["feedback"] += _rowcount(
            session.execute(
                update(FeedbackRow)
                .where(key_filter(FeedbackRow, part), FeedbackRow.comment.is_not(None))
                .values(comment=None)
                .execution_options(synchronize_session=False)
            )
        )
        counts["actions"] += _erase_actions(session, part)
    return counts


def _erase_actions(session: Session, keys: Sequence[TicketKey]) -> int:
    rows = session.execute(
        select(ActionRow.id, ActionRow.payload, ActionRow.last_error).where(
            key_filter(ActionRow, keys)
        )
    ).all()
    changed = 0
    for id_, payload, last_error in rows:
        clean = _blank_payload(payload)
        if clean == payload and last_error is None:
            continue
        session.execute(
            update(ActionRow)
            .where(ActionRow.id == id_)
            .values(payload=clean, last_error=None)
            .execution_options(synchronize_session=False)
        )
        changed += 1
    return changed


def _blank_payload(payload: Any) -> Any:
    if isinstance(payload, dict):
        return {
            k: (None if k in _PAYLOAD_TEXT and v is not None else _blank_payload(v))
            for k, v in payload.items()
        }
    if isinstance(payload, list):
        return [_blank_payload(v) for v in payload]
    return payload


def _rowcount(result: Any) -> int:
    return max(0, int(getattr(result, "rowcount", 0) or 0))


def tombstoned(keys: Sequence[TicketKey]) -> Any:
    """The select of the tombstoned keys among ``keys`` (``source, ticket_id``)."""
    return select(PurgeRow.source, PurgeRow.ticket_id).where(key_filter(PurgeRow, keys))


def guard(session: Session, keys: Iterable[TicketKey]) -> set[TicketKey]:
    """In a worker's write transaction, after its rows are written: those of these keys
    that are tombstoned, their rows erased in the same transaction. Holds the purge lock
    shared, so no tombstone commits between this check and the commit."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return set()
    hold_shared(session)
    gone = purged(session, keys)
    if gone:
        erase(session, list(gone))
    return gone


def purged(session: Session, keys: Sequence[TicketKey]) -> set[TicketKey]:
    """Which of these keys are tombstoned."""
    out: set[TicketKey] = set()
    for start in range(0, len(keys), CHUNK):
        part = keys[start : start + CHUNK]
        out.update(TicketKey(s, t) for s, t in session.execute(tombstoned(part)))
    return out


def newest_tombstone(session: Session) -> int:
    return int(session.scalar(select(func.max(PurgeRow.id))) or 0)


def tombstones_after(
    session: Session, after_id: int, limit: int = 10_000
) -> tuple[int, list[TicketKey]]:
    """The keys tombstoned with an id above ``after_id`` (up to ``limit``) and the last id
    read (``after_id`` when none)."""
    rows = session.execute(
        select(PurgeRow.id, PurgeRow.source, PurgeRow.ticket_id)
        .where(PurgeRow.id > after_id)
        .order_by(PurgeRow.id)
        .limit(limit)
    ).all()
    if not rows:
        return after_id, []
    return int(rows[-1][0]), [TicketKey(s, t) for _, s, t in rows]


def older_than(
    session: Session, cutoff: datetime, after_id: int = 0, limit: int = 5000
) -> tuple[int, list[TicketKey]]:
    """Keys of tickets received before ``cutoff`` and not purged yet, in id order from
    ``after_id``; and the last ticket id looked at (``after_id`` when none)."""
    rows = session.execute(
        select(TicketRow.id, TicketRow.source, TicketRow.ticket_id)
        .where(TicketRow.id > after_id, TicketRow.received_at < cutoff)
        .order_by(TicketRow.id)
        .limit(limit)
    ).all()
    if not rows:
        return after_id, []
    keys = [TicketKey(s, t) for _, s, t in rows]
    done = purged(session, keys)
    return int(rows[-1][0]), [k for k in keys if k not in done]
