"""What the read API answers, as plain functions over the database (no HTTP in here)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.orm import Session

from tickets import db


class Match(BaseModel):
    source: str
    ticket_id: str
    score: float = Field(description="cosine similarity to the decided ticket")
    fused_score: float | None = Field(
        None,
        description="dense + BM25 score that ranked it (hybrid ranking only); orders this "
        "decision's matches, not comparable across decisions",
    )


class DecisionOut(BaseModel):
    source: str
    ticket_id: str
    route: Literal["duplicate", "suggest", "manual"] = Field(
        description="the thresholds' rule applied to score"
    )
    score: float | None = Field(
        description="cosine similarity of the matched ticket; null when nothing was stored yet"
    )
    matched_source: str | None
    matched_ticket_id: str | None = Field(description="the first of matches")
    canonical_source: str
    canonical_ticket_id: str
    matches: list[Match] = Field(description="the similar tickets, in ranked_by order")
    ranked_by: Literal["hybrid", "cosine"] | None = Field(
        description="what ordered matches: hybrid (dense + BM25 fusion) or cosine alone; "
        "null for decisions made before it was recorded"
    )
    fused_score: float | None = Field(
        description="the matched ticket's fused score under hybrid ranking"
    )
    model: str
    duplicate_threshold: float
    suggest_threshold: float
    queue: str | None
    subject: str | None
    received_at: datetime
    decided_at: datetime
    latency_ms: int | None


class DecisionPage(BaseModel):
    decisions: list[DecisionOut]
    next_cursor: str | None


class RouteCount(BaseModel):
    bucket: str
    route: str
    count: int


class FeedbackOut(BaseModel):
    source: str
    ticket_id: str
    verdict: Literal["confirm", "veto"]
    agent: str
    route: str
    created_at: datetime


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was written as UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _out(row: db.DecisionRow) -> DecisionOut:
    return DecisionOut.model_validate(
        {
            **{
                c: getattr(row, c)
                for c in DecisionOut.model_fields
                if c not in ("received_at", "decided_at")
            },
            "received_at": _utc(row.received_at),
            "decided_at": _utc(row.decided_at),
        }
    )


def get_decision(engine: Engine, source: str, ticket_id: str) -> DecisionOut | str:
    """The decision, or why there is none (pending, failed, unknown) as a message."""
    with Session(engine) as s:
        row = s.scalar(
            select(db.DecisionRow).where(
                db.DecisionRow.source == source, db.DecisionRow.ticket_id == ticket_id
            )
        )
        if row is not None:
            return _out(row)
        failed = s.scalar(
            select(db.FailureRow).where(
                db.FailureRow.source == source, db.FailureRow.ticket_id == ticket_id
            )
        )
        if failed is not None:
            return f"ticket {source}:{ticket_id} failed ({failed.error_type}): {failed.reason}"
        stored = s.scalar(
            select(db.TicketRow.backfill).where(
                db.TicketRow.source == source, db.TicketRow.ticket_id == ticket_id
            )
        )
    if stored:
        return f"ticket {source}:{ticket_id} is history (backfill): it has no decision"
    return f"no decision for {source}:{ticket_id} (not received, or still queued)"


def _encode_cursor(decided_at: datetime, row_id: int) -> str:
    return base64.urlsafe_b64encode(
        f"{_utc(decided_at).timestamp():.6f}|{row_id}".encode()
    ).decode()


class BadQuery(ValueError):
    """A query parameter the database cannot use (HTTP 422 naming ``param``)."""

    def __init__(self, param: str, problem: str) -> None:
        self.param = param
        super().__init__(problem)


# Row ids are 64-bit signed integers in both databases.
_MAX_ROW_ID = 2**63 - 1


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        ts, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        at, number = datetime.fromtimestamp(float(ts), UTC), int(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError, OSError):
        number = -1
    if not 0 <= number <= _MAX_ROW_ID:
        raise BadQuery("cursor", "invalid cursor: pass the next_cursor of a previous page")
    return at, number


def _naive_for(engine: Engine, value: datetime, param: str = "cursor") -> datetime:
    try:
        value = _utc(value).astimezone(UTC)
    except OverflowError:
        # 0001-01-01T00:00:00+14:00 is in year 0 in UTC: Python's datetime has no such year.
        raise BadQuery(param, f"{param} is out of range once converted to UTC") from None
    # SQLite compares the stored text: drop the offset so both sides look alike.
    return value.replace(tzinfo=None) if engine.dialect.name == "sqlite" else value


def list_decisions(
    engine: Engine,
    *,
    route: str | None,
    queue: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: str | None,
) -> DecisionPage:
    d = db.DecisionRow
    stmt = select(d).order_by(d.decided_at.desc(), d.id.desc()).limit(limit + 1)
    if route:
        stmt = stmt.where(d.route == route)
    if queue:
        stmt = stmt.where(d.queue == queue)
    if since:
        stmt = stmt.where(d.decided_at >= _naive_for(engine, since, "since"))
    if until:
        stmt = stmt.where(d.decided_at < _naive_for(engine, until, "until"))
    if cursor:
        at, row_id = _decode_cursor(cursor)
        at_cmp = _naive_for(engine, at)
        stmt = stmt.where(or_(d.decided_at < at_cmp, and_(d.decided_at == at_cmp, d.id < row_id)))
    with Session(engine) as s:
        rows = list(s.scalars(stmt))
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = _encode_cursor(rows[-1].decided_at, rows[-1].id) if more and rows else None
    return DecisionPage(decisions=[_out(r) for r in rows], next_cursor=nxt)


def route_counts(
    engine: Engine,
    *,
    bucket: Literal["hour", "day"],
    since: datetime | None,
    until: datetime | None,
    queue: str | None,
) -> list[RouteCount]:
    d = db.DecisionRow
    if engine.dialect.name == "sqlite":
        fmt = "%Y-%m-%dT%H:00:00" if bucket == "hour" else "%Y-%m-%dT00:00:00"
        key: Any = func.strftime(fmt, d.decided_at)
    else:
        key = func.to_char(
            func.date_trunc(bucket, func.timezone("UTC", d.decided_at)), 'YYYY-MM-DD"T"HH24:MI:SS'
        )
    stmt = (
        select(key.label("bucket"), d.route, func.count())
        .group_by(key, d.route)
        .order_by(key, d.route)
    )
    if since:
        stmt = stmt.where(d.decided_at >= _naive_for(engine, since, "since"))
    if until:
        stmt = stmt.where(d.decided_at < _naive_for(engine, until, "until"))
    if queue:
        stmt = stmt.where(d.queue == queue)
    with Session(engine) as s:
        return [RouteCount(bucket=f"{b}Z", route=r, count=int(n)) for b, r, n in s.execute(stmt)]


def save_feedback(
    engine: Engine,
    source: str,
    ticket_id: str,
    verdict: Literal["confirm", "veto"],
    agent: str,
    comment: str | None,
) -> FeedbackOut | tuple[int, str]:
    now = datetime.now(UTC)
    with Session(engine) as s:
        decision = s.scalar(
            select(db.DecisionRow).where(
                db.DecisionRow.source == source, db.DecisionRow.ticket_id == ticket_id
            )
        )
        if decision is None:
            return 404, f"no decision for {source}:{ticket_id}"
        if decision.route not in ("duplicate", "suggest"):
            return (
                409,
                f"{source}:{ticket_id} was routed {decision.route!r}: feedback applies to duplicate or suggest",
            )
        route = decision.route  # read before the commit expires the row
        values = {
            "source": source,
            "ticket_id": ticket_id,
            "verdict": verdict,
            "agent": agent,
            "comment": comment,
            "route": route,
            "score": decision.score,
            "created_at": now,
        }
        insert = db._insert(s)
        stmt = insert(db.FeedbackRow.__table__).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["source", "ticket_id", "agent"],
            set_={
                k: stmt.excluded[k] for k in ("verdict", "comment", "route", "score", "created_at")
            },
        )
        s.execute(stmt)
        s.commit()
    return FeedbackOut(
        source=source,
        ticket_id=ticket_id,
        verdict=verdict,
        agent=agent,
        route=route,
        created_at=now,
    )
