"""SQL: the source of truth. Tickets, their decisions, and the tickets that failed.

Tables (schema owned by the Alembic migrations in ``tickets/migrations``):

- ``triage_tickets``: every accepted ticket's key and text, so the vector index can always
  be rebuilt from SQL (re-index, model change, lost store).
- ``triage_decisions``: one row per routed ticket; the stable surface dashboards query.
- ``triage_failures``: tickets that will not succeed on retry, with the reason.
- ``triage_decision_fence``: the decision lock's fencing token (worker/decision_lock.py).

Every write is keyed by ``(source, ticket_id)`` and idempotent: a redelivered ticket
never adds a row, and a decision, once made, is never rewritten (later tickets may
already point at it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tickets.model import BodyFormat, Ticket, TicketKey

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class TicketRow(Base):
    __tablename__ = "triage_tickets"
    __table_args__ = (UniqueConstraint("source", "ticket_id", name="uq_triage_tickets_key"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    # "text" or "html" (tickets/model.py BodyFormat): whether preparing the body again, for
    # `triage reindex` or the BM25 index, converts HTML tags in it.
    body_format: Mapped[BodyFormat] = mapped_column(
        String(8), default="html", server_default="html"
    )
    queue: Mapped[str | None] = mapped_column(String(100))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    content_hash: Mapped[str] = mapped_column(String(64))
    # True for history loaded with `triage ingest --backfill`: indexed, never routed.
    backfill: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str] = mapped_column(String(200))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DecisionRow(Base):
    __tablename__ = "triage_decisions"
    __table_args__ = (UniqueConstraint("source", "ticket_id", name="uq_triage_decisions_key"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[str] = mapped_column(String(255))
    route: Mapped[str] = mapped_column(String(16), index=True)
    # The cosine of the matched ticket; the route is the thresholds' rule applied to it.
    score: Mapped[float | None] = mapped_column(Float)
    # The matched ticket: the first of ``matches``, the top-ranked candidate.
    matched_source: Mapped[str | None] = mapped_column(String(64))
    matched_ticket_id: Mapped[str | None] = mapped_column(String(255))
    canonical_source: Mapped[str] = mapped_column(String(64))
    canonical_ticket_id: Mapped[str] = mapped_column(String(255), index=True)
    # Up to top_k candidates in the order ``ranked_by`` put them, each with its cosine
    # (``score``) and, under hybrid ranking, its ``fused_score``.
    matches: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # 'hybrid' (dense + BM25 fusion) or 'cosine'; null on rows decided before it was recorded.
    ranked_by: Mapped[str | None] = mapped_column(String(16))
    # The matched ticket's fused score under hybrid ranking: it orders one ticket's
    # candidates and is not comparable across tickets (thresholds apply to ``score``).
    fused_score: Mapped[float | None] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(200))
    duplicate_threshold: Mapped[float] = mapped_column(Float)
    suggest_threshold: Mapped[float] = mapped_column(Float)
    queue: Mapped[str | None] = mapped_column(String(100), index=True)
    subject: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # decided_at - received_at, in ms: end-to-end latency (the /metrics histogram). 64-bit:
    # a re-driven ticket keeps its first arrival time, which may be weeks old.
    latency_ms: Mapped[int | None] = mapped_column(BigInteger)
    # Share of [UNK] tokens (language-coverage guard); null when not measured.
    unknown_ratio: Mapped[float | None] = mapped_column(Float)
    # Why the route is what it is when the score alone does not say (e.g. unreadable text).
    reason: Mapped[str | None] = mapped_column(Text)


class IndexStateRow(Base):
    """Shared worker state, e.g. ``active_collection`` (switched by `triage reindex`)."""

    __tablename__ = "triage_index_state"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DecisionFenceRow(Base):
    """The fencing token of a decision lock (worker/decision_lock.py): one row per lock,
    incremented by each holder on entry; a commit checks that the row still has its token."""

    __tablename__ = "triage_decision_fence"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    token: Mapped[int] = mapped_column(BigInteger)
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FeedbackRow(Base):
    """An agent confirming or vetoing a `duplicate` / `suggest` decision; one per agent."""

    __tablename__ = "triage_feedback"
    __table_args__ = (
        UniqueConstraint("source", "ticket_id", "agent", name="uq_triage_feedback_agent"),
    )

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[str] = mapped_column(String(255))
    verdict: Mapped[str] = mapped_column(String(16))
    agent: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text)
    # The decision as it was when judged: calibration pairs score with verdict.
    route: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FailureRow(Base):
    __tablename__ = "triage_failures"
    __table_args__ = (UniqueConstraint("source", "ticket_id", name="uq_triage_failures_key"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[str] = mapped_column(String(255))
    error_type: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    # The message as received, so `triage redrive` can enqueue it again unchanged.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # The task's mode: a re-driven history ticket ('backfill') is stored again, not routed.
    mode: Mapped[str] = mapped_column(String(16), default="route", server_default="route")
    # Set by `triage redrive` when it re-publishes the ticket; cleared if it fails again.
    redriven_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    redrive_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RedriveRow(Base):
    """One re-drive of one failed ticket (`triage redrive`): kept after the ticket is decided
    and its failure row deleted, so what failed, why, and when it was sent again stays known."""

    __tablename__ = "triage_redrives"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[str] = mapped_column(String(255))
    error_type: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    redriven_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # 'published', or 'already decided' (a stale failure row, removed without a publish).
    outcome: Mapped[str] = mapped_column(String(32))


# --- engine ------------------------------------------------------------------------------


def make_engine(url: str) -> Engine:
    """One engine per process. SQLite gets WAL and a busy timeout so readers (`triage
    decisions`, dashboards) never block the worker's writes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _insert(session: Session) -> Any:
    return dialect_insert(session.get_bind().dialect.name)


def dialect_insert(name: str) -> Any:
    """The dialect's INSERT that supports ON CONFLICT (SQLite ≥ 3.24 and PostgreSQL)."""
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise RuntimeError(f"unsupported database dialect {name!r}: use SQLite or PostgreSQL")


def key_filter(model: Any, keys: Sequence[TicketKey]) -> Any:
    return tuple_(model.source, model.ticket_id).in_([tuple(k) for k in keys])


# --- reads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownTicket:
    """What SQL already knows of a key: stored (and how), and decided (and how)."""

    backfill: bool
    decision: DecisionRow | None


def known_tickets(session: Session, keys: Sequence[TicketKey]) -> dict[TicketKey, KnownTicket]:
    if not keys:
        return {}
    rows = session.execute(
        select(TicketRow.source, TicketRow.ticket_id, TicketRow.backfill, DecisionRow)
        .outerjoin(
            DecisionRow,
            (DecisionRow.source == TicketRow.source)
            & (DecisionRow.ticket_id == TicketRow.ticket_id),
        )
        .where(key_filter(TicketRow, keys))
    ).all()
    return {TicketKey(s, t): KnownTicket(bool(b), d) for s, t, b, d in rows}


def tickets_by_key(session: Session, keys: Iterable[TicketKey]) -> dict[TicketKey, TicketRow]:
    keys = list(keys)
    if not keys:
        return {}
    rows = session.scalars(select(TicketRow).where(key_filter(TicketRow, keys)))
    return {TicketKey(r.source, r.ticket_id): r for r in rows}


# --- writes ------------------------------------------------------------------------------


def ticket_values(
    ticket: Ticket, *, content_hash: str, backfill: bool, model: str
) -> dict[str, Any]:
    return {
        "source": ticket.source,
        "ticket_id": ticket.ticket_id,
        "subject": ticket.subject,
        "body": ticket.body,
        "body_format": ticket.body_format,
        "queue": ticket.queue,
        "tags": list(ticket.tags),
        "created_at": ticket.created_at,
        "received_at": ticket.received_at,
        "content_hash": content_hash,
        "backfill": backfill,
        "model": model,
        "stored_at": datetime.now(UTC),
    }


def save_batch(
    session: Session, tickets: Sequence[dict[str, Any]], decisions: Sequence[dict[str, Any]]
) -> None:
    """Store tickets and their decisions in the caller's transaction.

    ON CONFLICT DO NOTHING on both: the first accepted version of a ticket and its first
    decision stand; a redelivery or a re-import changes nothing. A success also clears an
    earlier failure row of the same key (re-driven tickets), so each key ends in exactly
    one of the two tables.
    """
    insert = _insert(session)
    # Core inserts on the tables, not the ORM classes: the ORM's bulk path splits the rows
    # into one statement per pattern of None values; Core sends one executemany.
    if tickets:
        session.execute(
            insert(TicketRow.__table__).on_conflict_do_nothing(
                index_elements=["source", "ticket_id"]
            ),
            list(tickets),
        )
    if decisions:
        session.execute(
            insert(DecisionRow.__table__).on_conflict_do_nothing(
                index_elements=["source", "ticket_id"]
            ),
            list(decisions),
        )
    done = [TicketKey(t["source"], t["ticket_id"]) for t in tickets]
    if done:
        session.execute(delete(FailureRow).where(key_filter(FailureRow, done)))


ACTIVE_COLLECTION = "active_collection"


def get_state(session: Session, name: str) -> str | None:
    row = session.get(IndexStateRow, name)
    return row.value if row is not None else None


def set_state(session: Session, name: str, value: str) -> None:
    stmt = _insert(session)(IndexStateRow.__table__).values(
        name=name, value=value, updated_at=datetime.now(UTC)
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
    )
    session.execute(stmt)


def record_failure(
    session: Session,
    *,
    key: TicketKey,
    error_type: str,
    reason: str,
    attempts: int,
    payload: dict[str, Any],
    mode: str = "route",
) -> None:
    """Dead-letter one ticket, unless it has been decided meanwhile (then it did not fail).

    A re-driven ticket that fails again gets its row back as not re-driven (redriven_at
    cleared), keeping its redrive_count.
    """
    decided = session.scalar(
        select(DecisionRow.id).where(
            (DecisionRow.source == key.source) & (DecisionRow.ticket_id == key.ticket_id)
        )
    )
    if decided is not None:
        return
    values = {
        "source": key.source,
        "ticket_id": key.ticket_id,
        "error_type": error_type,
        "reason": reason[:4000],
        "attempts": attempts,
        "payload": payload,
        "failed_at": datetime.now(UTC),
        "mode": mode,
        "redriven_at": None,
    }
    stmt = _insert(session)(FailureRow).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["source", "ticket_id"],
        set_={
            k: stmt.excluded[k]
            for k in ("error_type", "reason", "attempts", "payload", "failed_at", "mode")
        }
        | {"redriven_at": None},
    )
    session.execute(stmt)
