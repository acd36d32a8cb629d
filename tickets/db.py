"""SQL: the source of truth. Tickets, their decisions, and the tickets that failed.

Tables (schema owned by the Alembic migrations in ``tickets/migrations``):

- ``triage_tickets``: every accepted ticket's key and text, so the vector index can always
  be rebuilt from SQL (re-index, model change, lost store).
- ``triage_decisions``: one row per routed ticket; the stable surface dashboards query.
- ``triage_failures``: tickets that will not succeed on retry, with the reason.
- ``triage_decision_fence``: the decision lock's fencing token (worker/decision_lock.py).
- ``triage_redecisions``: the audit of edited tickets routed again (worker/redecide.py).

Every write is keyed by ``(source, ticket_id)`` and idempotent: a redelivered ticket
never adds a row, and a decision, once made, is never rewritten by its ticket's
redelivery (later tickets may already point at it); only an edit of the ticket routes it
again, when TRIAGE_REDECIDE_ON_EDIT says so (worker/redecide.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    false,
    func,
    literal,
    null,
    or_,
    select,
    text,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from tickets.model import BodyFormat, Ticket, TicketKey

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


_UNINDEXED = "indexed_at IS NULL AND vector IS NOT NULL"


class TicketRow(Base):
    __tablename__ = "triage_tickets"
    __table_args__ = (
        UniqueConstraint("source", "ticket_id", name="uq_triage_tickets_key"),
        Index(
            "ix_triage_tickets_unindexed",
            "id",
            postgresql_where=text(_UNINDEXED),
            sqlite_where=text(_UNINDEXED),
        ),
        Index("ix_triage_tickets_queue_id", "queue", "id"),
        Index("ix_triage_tickets_source_id", "source", "id"),
    )

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
    # The ticket's unit vector (float32 bytes) in the space of the collection active when it
    # was written: the decision lock's catch-up compares with it, and a vector the store
    # lost is re-stored from it. Null on rows stored before it was kept (they are indexed).
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)
    # When the vector reached the vector store; null until then (worker/pipeline.py).
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The language-coverage guard's verdict (null on older rows: readable).
    readable: Mapped[bool | None] = mapped_column(Boolean)
    # The ticket's status in the product's vocabulary (tickets/model.py Status), kept by the
    # helpdesk's update webhooks; and the helpdesk's time of the last change applied, so that
    # an older update delivered late never overwrites a newer one.
    status: Mapped[str] = mapped_column(String(16), default="open", server_default="open")
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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
    # When an edit of the ticket last re-decided it (TRIAGE_REDECIDE_ON_EDIT); null if never.
    redecided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


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


class RedecisionRow(Base):
    """One re-decision of an edited ticket (worker/redecide.py): the decision before and
    after, or ``kept`` when an agent had reviewed it. Keys and routes only, never text."""

    __tablename__ = "triage_redecisions"
    __table_args__ = (Index("ix_triage_redecisions_key", "source", "ticket_id"),)

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(64))
    ticket_id: Mapped[str] = mapped_column(String(255))
    # 'changed' (route or matched ticket differ), 'same', or 'kept' (reviewed: not re-decided)
    outcome: Mapped[str] = mapped_column(String(16))
    route_before: Mapped[str] = mapped_column(String(16))
    score_before: Mapped[float | None] = mapped_column(Float)
    matched_source_before: Mapped[str | None] = mapped_column(String(64))
    matched_ticket_id_before: Mapped[str | None] = mapped_column(String(255))
    route_after: Mapped[str | None] = mapped_column(String(16))
    score_after: Mapped[float | None] = mapped_column(Float)
    matched_source_after: Mapped[str | None] = mapped_column(String(64))
    matched_ticket_id_after: Mapped[str | None] = mapped_column(String(255))
    redecided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


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


class _KeyIn(ColumnElement[bool]):
    """``(source, ticket_id) IN keys``, written for each dialect's planner (:func:`key_filter`).

    The PostgreSQL form is rendered from its four parts here rather than built of SQLAlchemy's
    table-valued and tuple constructs: those hold reference cycles, which every statement
    would leave to the garbage collector (a full collection walks them, and may fall
    inside a decision section)."""

    inherit_cache = True
    _is_implicitly_boolean = True
    type = Boolean()
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's own declaration)
        ("portable", InternalTraversal.dp_clauseelement),
        ("source", InternalTraversal.dp_clauseelement),
        ("ticket_id", InternalTraversal.dp_clauseelement),
        ("sources", InternalTraversal.dp_clauseelement),
        ("ids", InternalTraversal.dp_clauseelement),
    ]

    def __init__(
        self,
        portable: ColumnElement[bool],
        source: ColumnElement[str],
        ticket_id: ColumnElement[str],
        sources: ColumnElement[Any],
        ids: ColumnElement[Any],
    ) -> None:
        self.portable = portable
        self.source, self.ticket_id, self.sources, self.ids = source, ticket_id, sources, ids


@compiles(_KeyIn)
def _key_in(element: _KeyIn, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.portable.self_group(), **kw))


@compiles(_KeyIn, "postgresql")
def _key_in_postgres(element: _KeyIn, compiler: Any, **kw: Any) -> str:
    source, ticket_id, sources, ids = (
        compiler.process(part, **kw)
        for part in (element.source, element.ticket_id, element.sources, element.ids)
    )
    return f"({source}, {ticket_id}) IN (SELECT * FROM unnest({sources}, {ids}))"


_TEXTS = postgresql.ARRAY(String)


def key_filter(model: Any, keys: Sequence[TicketKey]) -> Any:
    """``(source, ticket_id) IN keys``, as each planner finds the key index with it.

    SQLite: one ``ticket_id IN (...)`` per source (a row-value IN list makes it scan the
    whole table). PostgreSQL: a semi-join with the keys unnested from two array parameters,
    so every key is one probe of the unique (source, ticket_id) index. The per-source form
    lets PostgreSQL's planner pick the (source, id) index for a source its statistics have
    not seen yet (a new helpdesk, until the next ANALYZE) and read every ticket of that
    source: 15.5 ms for 32 keys with 40,000 of them stored, against 1.5 ms for the
    semi-join; 1,000 keys of an analysed source take 18.6 ms against 10.7 ms
    (bench/key_lookup.py, bench/results/key-lookup-plans.txt). The statement's text does
    not depend on the number of keys, so SQLAlchemy compiles it once."""
    if not keys:
        return false()
    by_source: dict[str, list[str]] = {}
    for key in keys:
        by_source.setdefault(key.source, []).append(key.ticket_id)
    portable = or_(
        *((model.source == source) & model.ticket_id.in_(ids) for source, ids in by_source.items())
    )
    return _KeyIn(
        portable,
        model.source,
        model.ticket_id,
        bindparam(None, [k.source for k in keys], type_=_TEXTS),
        bindparam(None, [k.ticket_id for k in keys], type_=_TEXTS),
    )


# --- reads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownTicket:
    """What SQL already knows of a key: stored (and how), decided (and how), and whether its
    vector is known to be in the vector store (``indexed``: a row without a kept vector
    predates the column and counts as indexed)."""

    backfill: bool
    decision: DecisionRow | None
    vector: bytes | None = None
    indexed: bool = True
    readable: bool = True
    queue: str | None = None


def known_tickets(session: Session, keys: Sequence[TicketKey]) -> dict[TicketKey, KnownTicket]:
    if not keys:
        return {}
    rows = session.execute(
        select(
            TicketRow.source,
            TicketRow.ticket_id,
            TicketRow.backfill,
            TicketRow.vector,
            TicketRow.indexed_at,
            TicketRow.readable,
            TicketRow.queue,
            DecisionRow,
        )
        .outerjoin(
            DecisionRow,
            (DecisionRow.source == TicketRow.source)
            & (DecisionRow.ticket_id == TicketRow.ticket_id),
        )
        .where(key_filter(TicketRow, keys))
    ).all()
    return {
        TicketKey(s, t): KnownTicket(bool(b), d, v, v is None or at is not None, r is not False, q)
        for s, t, b, v, at, r, q, d in rows
    }


# --- match scopes and the decision section's catch-up ---------------------------------------

#: What a match scope groups tickets by (TRIAGE_MATCH_SCOPE): None for every ticket at once.
ScopeField = Literal["queue", "source"] | None


def scope_filter(field: ScopeField, value: str | None) -> Any:
    """The tickets of one scope (``queue`` null is a scope of its own)."""
    if field is None:
        return true()
    column = TicketRow.queue if field == "queue" else TicketRow.source
    return column.is_(None) if value is None else column == value


def newest_ticket_id(session: Session, field: ScopeField = None, value: str | None = None) -> int:
    """The highest ticket id committed in a scope (0 for none). Tickets of one scope are
    written one section at a time, so they commit in id order."""
    found = session.scalar(select(func.max(TicketRow.id)).where(scope_filter(field, value)))
    return int(found or 0)


@dataclass(frozen=True)
class StoredTicket:
    """A ticket row with what the vector store's metadata holds of it."""

    id: int
    key: TicketKey
    subject: str | None
    body: str
    body_format: BodyFormat
    queue: str | None
    vector: bytes | None
    readable: bool
    route: str  # its decision's route, 'history' for a backfilled ticket
    canonical: TicketKey
    stored_at: datetime
    received_at: datetime | None = None
    status: str = "open"


def _stored(row: Any) -> StoredTicket:
    return stored_ticket(row._mapping)


def stored_ticket(
    values: Mapping[str, Any], decision: Mapping[str, Any] | None = None
) -> StoredTicket:
    """A ticket row's columns (and its decision's ``route``, ``canonical_source``,
    ``canonical_ticket_id``, in ``values`` or apart) as a :class:`StoredTicket`: the
    columns left to their defaults read as the database fills them; no id reads as 0."""
    decided = values if decision is None else decision
    key = TicketKey(values["source"], values["ticket_id"])
    route = decided.get("route")
    return StoredTicket(
        id=int(values.get("id") or 0),
        key=key,
        subject=values["subject"],
        body=values["body"] or "",
        body_format=values.get("body_format") or "html",
        queue=values["queue"],
        vector=values["vector"],
        readable=values.get("readable") is not False,
        route="history" if route is None else route,
        canonical=key
        if route is None
        else TicketKey(decided["canonical_source"], decided["canonical_ticket_id"]),
        stored_at=values["stored_at"],
        received_at=values["received_at"],
        status=values.get("status") or "open",
    )


def _stored_query(*leading: Any) -> Any:
    return select(
        *leading,
        TicketRow.id,
        TicketRow.source,
        TicketRow.ticket_id,
        TicketRow.subject,
        TicketRow.body,
        TicketRow.body_format,
        TicketRow.queue,
        TicketRow.vector,
        TicketRow.readable,
        TicketRow.stored_at,
        TicketRow.received_at,
        TicketRow.status,
        DecisionRow.route,
        DecisionRow.canonical_source,
        DecisionRow.canonical_ticket_id,
    ).outerjoin(
        DecisionRow,
        (DecisionRow.source == TicketRow.source) & (DecisionRow.ticket_id == TicketRow.ticket_id),
    )


def unindexed_tickets(session: Session) -> list[tuple[int, datetime]]:
    """(id, stored_at) of the tickets whose kept vector has not reached the vector store
    (a partial index finds them: normally none, or a batch just committed)."""
    rows = session.execute(
        select(TicketRow.id, TicketRow.stored_at)
        .where(TicketRow.indexed_at.is_(None), TicketRow.vector.is_not(None))
        .order_by(TicketRow.id)
    ).all()
    return [(int(i), at) for i, at in rows]


def stored_tickets(
    session: Session,
    *,
    after_id: int | None = None,
    ids: Sequence[int] = (),
    field: ScopeField = None,
    value: str | None = None,
) -> list[StoredTicket]:
    """The tickets of a scope with an id above ``after_id`` or among ``ids``, in id order,
    with their kept vectors and decisions."""
    wanted = []
    if after_id is not None:
        wanted.append(TicketRow.id > after_id)
    if ids:
        wanted.append(TicketRow.id.in_(list(ids)))
    if not wanted:
        return []
    rows = session.execute(
        _stored_query().where(or_(*wanted), scope_filter(field, value)).order_by(TicketRow.id)
    ).all()
    return [_stored(r) for r in rows]


@dataclass(frozen=True)
class ViewMarks:
    """What tells whether a section's view is still the one read before: which of its
    keys are stored, and the ids of the scope's tickets committed since its watermark or
    still unindexed (:func:`view_marks`); and, by id, those of them above ``read_after``
    read whole."""

    stored: set[TicketKey]
    since: set[int]
    rows: dict[int, StoredTicket] = field(default_factory=dict)


def view_marks(
    session: Session,
    keys: Sequence[TicketKey],
    *,
    after_id: int,
    ids: Sequence[int] = (),
    field: ScopeField = None,
    value: str | None = None,
    read_after: int | None = None,
) -> ViewMarks:
    """:func:`known_tickets`' keys and :func:`stored_tickets`' ids for the same arguments,
    in one statement that reads no text, vector or decision; with ``read_after``, the
    tickets among those ids above it read whole in the same statement (those a view read
    up to that id has not seen: a section catches up with them without a second read)."""
    wanted = or_(TicketRow.id > after_id, *([TicketRow.id.in_(list(ids))] if ids else []))
    scoped = scope_filter(field, value)
    above = false() if read_after is None else TicketRow.id > read_after
    # The whole rows first: a union's result columns take the first select's types (how
    # SQLite's stored datetimes are read back).
    whole = _stored_query(literal(2).label("kind")).where(wanted, scoped, above)
    light = [null().label(c.key) for c in whole.selected_columns][4:]
    stored = select(literal(0), TicketRow.id, TicketRow.source, TicketRow.ticket_id, *light).where(
        key_filter(TicketRow, keys)
    )
    since = select(literal(1), TicketRow.id, TicketRow.source, TicketRow.ticket_id, *light).where(
        wanted, scoped, ~above
    )
    marks = ViewMarks(set(), set())
    for row in session.execute(union_all(whole, stored, since)):
        if row.kind == 0:
            marks.stored.add(TicketKey(row.source, row.ticket_id))
            continue
        marks.since.add(int(row.id))
        if row.kind == 2:
            marks.rows[int(row.id)] = _stored(row)
    return marks


def keep_vectors(
    session: Session, vectors: Mapping[TicketKey, bytes], *, only_missing: bool = False
) -> None:
    """Write the kept vectors of these tickets (``only_missing``: of those without one)."""
    if not vectors:
        return
    table: Table = TicketRow.__table__  # type: ignore[assignment]
    where = [table.c.source == bindparam("k_source"), table.c.ticket_id == bindparam("k_id")]
    if only_missing:
        where.append(table.c.vector.is_(None))
    # Core on the table: an executemany of one statement (the ORM would want primary keys).
    session.execute(
        update(table).where(*where).values(vector=bindparam("k_vector")),
        [{"k_source": k.source, "k_id": k.ticket_id, "k_vector": v} for k, v in vectors.items()],
    )


def mark_indexed(session: Session, keys: Sequence[TicketKey], at: datetime) -> None:
    """The vectors of these tickets are in the vector store."""
    if keys:
        session.execute(
            update(TicketRow)
            .where(key_filter(TicketRow, keys), TicketRow.indexed_at.is_(None))
            .values(indexed_at=at)
            .execution_options(synchronize_session=False)
        )


def tickets_by_key(session: Session, keys: Iterable[TicketKey]) -> dict[TicketKey, TicketRow]:
    keys = list(keys)
    if not keys:
        return {}
    rows = session.scalars(select(TicketRow).where(key_filter(TicketRow, keys)))
    return {TicketKey(r.source, r.ticket_id): r for r in rows}


# --- writes ------------------------------------------------------------------------------


def ticket_values(
    ticket: Ticket,
    *,
    content_hash: str,
    backfill: bool,
    model: str,
    vector: bytes | None = None,
    readable: bool = True,
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
        "vector": vector,
        "indexed_at": None,
        "readable": readable,
    }


# Taken from the new version when a backfilled ticket is routed: what its vector and its
# match scope are now. The rest of the first accepted version stands.
_REROUTED_FROM_NEW = ("queue", "vector", "readable")


def _next_ticket_id(session: Session) -> Any:
    """The id a new ticket row would get (ids are never reused: SQLite's is the highest
    plus one, and nothing deletes tickets; PostgreSQL's comes from the column's sequence)."""
    if session.get_bind().dialect.name == "postgresql":
        return text("nextval(pg_get_serial_sequence('triage_tickets', 'id'))")
    return select(func.max(TicketRow.id) + 1).scalar_subquery()


def next_ticket_id(session: Session) -> Any:
    """The id a ticket row moves to when its text or vector changes (worker/lifecycle.py)."""
    return _next_ticket_id(session)


def excluded_keys(
    session: Session, keys: Iterable[TicketKey], statuses: Sequence[str]
) -> set[TicketKey]:
    """Of ``keys``, the stored tickets whose status is not one of ``statuses``."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return set()
    rows = session.execute(
        select(TicketRow.source, TicketRow.ticket_id).where(
            key_filter(TicketRow, keys), TicketRow.status.not_in(list(statuses))
        )
    )
    return {TicketKey(r[0], r[1]) for r in rows}


@dataclass(frozen=True)
class WriteMarks:
    """What a decision commit reads before it writes (:func:`write_marks`)."""

    active: str | None  # the active collection
    failed: set[TicketKey]  # keys with a failure row
    tombstoned: set[TicketKey]  # keys of the given tombstones


def write_marks(session: Session, keys: Sequence[TicketKey], *, tombstones: Any) -> WriteMarks:
    """In one statement: the active collection, which of ``keys`` have a failure row, and
    the keys that ``tombstones`` (a select of ``source, ticket_id``) gives."""
    active = select(IndexStateRow.value, literal(None), literal("active")).where(
        IndexStateRow.name == ACTIVE_COLLECTION
    )
    failed = select(FailureRow.source, FailureRow.ticket_id, literal("failed")).where(
        key_filter(FailureRow, keys)
    )
    rows = session.execute(union_all(active, failed, tombstones.add_columns(literal("gone"))))
    value: str | None = None
    found: dict[str, set[TicketKey]] = {"failed": set(), "gone": set()}
    for a, b, kind in rows:
        if kind == "active":
            value = a
        else:
            found[kind].add(TicketKey(a, b))
    return WriteMarks(value, found["failed"], found["gone"])


def save_batch(
    session: Session,
    tickets: Sequence[dict[str, Any]],
    decisions: Sequence[dict[str, Any]],
    rerouted: Sequence[TicketKey] = (),
    *,
    failed: Iterable[TicketKey] | None = None,
) -> None:
    """Store tickets and their decisions in the caller's transaction.

    ON CONFLICT DO NOTHING on both: the first accepted version of a ticket and its first
    decision stand; a redelivery or a re-import changes nothing. A success also clears an
    earlier failure row of the same key (re-driven tickets), so each key ends in exactly
    one of the two tables: ``failed``, when the caller has read which keys have one
    (:func:`write_marks`), else every key's.

    ``rerouted``: stored history tickets routed now. Their rows move to a new id (the text
    kept, the new vector and metadata taken): a section that took its snapshot earlier
    finds every change made since as an id above its snapshot's.
    """
    insert = _insert(session)
    if rerouted:
        wanted = set(rerouted)
        table: Table = TicketRow.__table__  # type: ignore[assignment]
        values = [
            {"k_source": t["source"], "k_id": t["ticket_id"]}
            | {f"k_{c}": t[c] for c in _REROUTED_FROM_NEW}
            for t in tickets
            if TicketKey(t["source"], t["ticket_id"]) in wanted
        ]
        if values:
            session.execute(
                update(table)
                .where(
                    table.c.source == bindparam("k_source"),
                    table.c.ticket_id == bindparam("k_id"),
                )
                .values(
                    id=_next_ticket_id(session),
                    indexed_at=None,
                    **{c: bindparam(f"k_{c}") for c in _REROUTED_FROM_NEW},
                ),
                values,
            )
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
    if failed is not None:
        wanted = set(failed)
        done = [k for k in done if k in wanted]
    if done:
        session.execute(delete(FailureRow).where(key_filter(FailureRow, done)))


ACTIVE_COLLECTION = "active_collection"


def get_state(session: Session, name: str) -> str | None:
    return session.scalar(select(IndexStateRow.value).where(IndexStateRow.name == name))


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


def subjects(session: Session, keys: Sequence[TicketKey]) -> dict[TicketKey, str | None]:
    """The stored subjects of these tickets (a purged or unknown ticket is absent)."""
    if not keys:
        return {}
    rows = session.execute(
        select(TicketRow.source, TicketRow.ticket_id, TicketRow.subject).where(
            key_filter(TicketRow, keys)
        )
    )
    return {TicketKey(r.source, r.ticket_id): r.subject for r in rows}


def pages_by_id(
    session: Session, query: Any, *, after: int, upto: int | None, size: int
) -> Iterator[Sequence[Any]]:
    """The rows of ``query`` (a select over ``triage_tickets`` whose first column is its id)
    with ``after`` < id ≤ ``upto``, in id order, ``size`` at a time: how a process catches
    up with the tickets committed since it last read."""
    last = after
    while True:
        page = query.where(TicketRow.id > last).order_by(TicketRow.id).limit(size)
        if upto is not None:
            page = page.where(TicketRow.id <= upto)
        rows = session.execute(page).all()
        if rows:
            yield rows
            last = int(rows[-1][0])
        if len(rows) < size:
            return
