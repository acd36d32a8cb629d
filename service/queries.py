"""The read side: what the read API and the dashboard answer, as plain functions over the
database (no HTTP in here).

The dashboard's numbers come from the BI views of migration 0004 (``triage_routes_hourly``,
``triage_routes_daily``, ``triage_duplicate_clusters``, ``triage_score_distribution``,
``triage_failures_by_reason``), so the page, Grafana and Metabase agree.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import redis
from pydantic import BaseModel
from sqlalchemy import (
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    case,
    cast,
    column,
    func,
    or_,
    select,
)
from sqlalchemy import table as sql_table
from sqlalchemy.orm import Session

from service.helpdesk_links import helpdesk_link
from tickets import db, outbox
from tickets.decisions import DecisionOut as DecisionOut  # the read API's response model
from tickets.decisions import as_utc, decision_out
from tickets.feedback import load_verdicts, record_verdict
from tickets.model import TicketKey
from worker.routing import Thresholds

logger = logging.getLogger(__name__)

ROUTES = ("duplicate", "suggest", "manual")
HOURS = 48  # the dashboard's time series covers at most the last 48 hours
TOP_CLUSTERS = 10
FAILING_DELIVERIES = 10  # the dashboard lists this many failed or dead deliveries, newest first
MEMBERS_SHOWN = 500
# What an agent may say of a `duplicate` / `suggest` decision: the API's and the dashboard's.
Verdict = Literal["confirm", "veto"]


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
    verdict: Verdict
    agent: str
    route: str
    created_at: datetime


# The decision's serialisation lives below the service: the worker's outbound webhook sends
# the same body as the read API.
_utc = as_utc
_out = decision_out


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
        stmt = _older_than(engine, stmt, cursor)
    with Session(engine) as s:
        rows, nxt = _page_of(list(s.scalars(stmt)), limit)
    return DecisionPage(decisions=[_out(r) for r in rows], next_cursor=nxt)


def _older_than(engine: Engine, stmt: Any, cursor: str) -> Any:
    """``stmt`` (decisions, newest first) from just after the row ``cursor`` names: keyset
    pagination, so rows removed or added before it never shift a page (OFFSET would)."""
    d = db.DecisionRow
    at, row_id = _decode_cursor(cursor)
    at_cmp = _naive_for(engine, at)
    return stmt.where(or_(d.decided_at < at_cmp, and_(d.decided_at == at_cmp, d.id < row_id)))


def _page_of(rows: list[db.DecisionRow], limit: int) -> tuple[list[db.DecisionRow], str | None]:
    """The first ``limit`` of ``limit + 1`` rows fetched, and the cursor of the next page."""
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, _encode_cursor(rows[-1].decided_at, rows[-1].id) if more and rows else None


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
    verdict: Verdict,
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
        record_verdict(s, decision, verdict=verdict, agent=agent, comment=comment, now=now)
        s.commit()
    return FeedbackOut(
        source=source,
        ticket_id=ticket_id,
        verdict=verdict,
        agent=agent,
        route=route,
        created_at=now,
    )


# --- the dashboard: the BI views (tickets/migrations/versions/0004_bi_views.py) ------------
# Typed, so SQLite's text timestamps come back as datetimes like PostgreSQL's.

_TS = DateTime(timezone=True)
ROUTES_HOURLY = sql_table(
    "triage_routes_hourly",
    column("bucket", _TS),
    column("queue", String()),
    column("route", String()),
    column("decisions", Integer()),
    column("avg_score", Float()),
)
ROUTES_DAILY = sql_table(
    "triage_routes_daily",
    column("bucket", _TS),
    column("queue", String()),
    column("route", String()),
    column("decisions", Integer()),
    column("avg_score", Float()),
)
CLUSTERS = sql_table(
    "triage_duplicate_clusters",
    column("canonical_source", String()),
    column("canonical_ticket_id", String()),
    column("size", Integer()),
    column("duplicates", Integer()),
    column("first_seen", _TS),
    column("last_seen", _TS),
    column("subject", String()),
    column("queue", String()),
)
SCORES = sql_table(
    "triage_score_distribution",
    column("route", String()),
    column("bucket_index", Integer()),
    column("score_low", Float()),
    column("score_high", Float()),
    column("decisions", Integer()),
)
FAILURES = sql_table(
    "triage_failures_by_reason",
    column("error_type", String()),
    column("failures", Integer()),
    column("last_failed_at", _TS),
)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat().replace("+00:00", "Z")


def _bucket_at(engine: Engine, at: datetime) -> Any:
    """A bound value comparable with a view's ``bucket`` (SQLite compares its text form)."""
    if engine.dialect.name == "sqlite":
        return bindparam("since", at.strftime("%Y-%m-%d %H:%M:%S"), type_=String())
    return bindparam("since", at, type_=_TS)


def read_dashboard(
    engine: Engine,
    *,
    thresholds: Thresholds,
    queue_depth: Callable[[], int],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (the body of ``/dashboard/data``)."""
    now = _utc(now or datetime.now(UTC))
    end = now.replace(minute=0, second=0, microsecond=0)
    earliest = end - timedelta(hours=HOURS - 1)
    with Session(engine) as s:
        totals = {
            str(route): int(n or 0)
            for route, n in s.execute(
                select(ROUTES_DAILY.c.route, func.sum(ROUTES_DAILY.c.decisions)).group_by(
                    ROUTES_DAILY.c.route
                )
            )
        }
        hourly_rows = s.execute(
            select(
                ROUTES_HOURLY.c.bucket, ROUTES_HOURLY.c.route, func.sum(ROUTES_HOURLY.c.decisions)
            )
            .where(ROUTES_HOURLY.c.bucket >= _bucket_at(engine, earliest))
            .group_by(ROUTES_HOURLY.c.bucket, ROUTES_HOURLY.c.route)
        ).all()
        clusters = s.execute(
            select(CLUSTERS)
            .order_by(
                CLUSTERS.c.size.desc(),
                CLUSTERS.c.last_seen.desc(),
                CLUSTERS.c.canonical_source,
                CLUSTERS.c.canonical_ticket_id,
            )
            .limit(TOP_CLUSTERS)
        ).all()
        scores = s.execute(select(SCORES.c.route, SCORES.c.bucket_index, SCORES.c.decisions)).all()
        failures = s.execute(
            select(FAILURES).order_by(FAILURES.c.failures.desc(), FAILURES.c.error_type)
        ).all()
        delivery_totals = outbox.status_totals(s)
        failing = outbox.listing(s, (outbox.FAILED, outbox.DEAD), FAILING_DELIVERIES)

    # Hourly series: the last 48 hours, or since the first decision if that is more recent.
    counts: dict[datetime, dict[str, int]] = {}
    for bucket, route, n in hourly_rows:
        counts.setdefault(_utc(bucket), {})[str(route)] = int(n or 0)
    in_window = sum(sum(c.values()) for c in counts.values())
    older = in_window < sum(totals.values())  # decisions before the window exist
    # nothing before the window: start at the first decision (or now, if there is none yet)
    start = earliest if older else (max(earliest, min(counts)) if counts else end)
    last = max([end, *counts])
    buckets = [
        start + timedelta(hours=i) for i in range(int((last - start) / timedelta(hours=1)) + 1)
    ]
    hourly = {
        "start": _iso(start),
        "end": _iso(last),
        "buckets": [_iso(b) for b in buckets],
        "routes": {r: [counts.get(b, {}).get(r, 0) for b in buckets] for r in ROUTES},
    }

    # Score histogram, 0.05 wide, from 0 (or lower: negative scores, a low threshold) to 1.
    by_bin: dict[int, dict[str, int]] = {}
    for route, index, n in scores:
        by_bin.setdefault(int(index), {})[str(route)] = int(n or 0)
    low = min([0, math.floor(thresholds.suggest * 20), *by_bin])
    bins = [
        {
            "index": i,
            "low": i / 20,
            "high": (i + 1) / 20,
            "counts": {r: by_bin.get(i, {}).get(r, 0) for r in ROUTES},
        }
        for i in range(low, 20)
    ]
    scored = {r: sum(b.get(r, 0) for b in by_bin.values()) for r in ROUTES}

    try:
        depth: int | None = int(queue_depth())
    except (redis.RedisError, OSError) as exc:
        logger.warning("dashboard: queue depth unknown: %s", exc)
        depth = None

    return {
        "generated_at": _iso(now),
        "thresholds": {"duplicate": thresholds.duplicate, "suggest": thresholds.suggest},
        "totals": {
            "decisions": sum(totals.values()),
            "routes": {r: totals.get(r, 0) for r in ROUTES},
            "failures": sum(int(f.failures) for f in failures),
            "no_score": {r: totals.get(r, 0) - scored[r] for r in ROUTES},
        },
        "queue_depth": depth,
        "hourly": hourly,
        "histogram": {"width": 0.05, "bins": bins},
        "clusters": [
            {
                "source": c.canonical_source,
                "ticket_id": c.canonical_ticket_id,
                "size": int(c.size),
                "first_seen": _iso(c.first_seen),
                "last_seen": _iso(c.last_seen),
                "subject": c.subject,
                "queue": c.queue,
            }
            for c in clusters
        ],
        "failures": [
            {
                "error_type": f.error_type,
                "failures": int(f.failures),
                "last_failed_at": _iso(f.last_failed_at),
            }
            for f in failures
        ],
        "review": review_stats(engine, thresholds),
        "deliveries": {
            "totals": delivery_totals,
            "failing": [
                {
                    "action_id": a.action_id,
                    "source": a.source,
                    "ticket_id": a.ticket_id,
                    "kind": a.kind,
                    "target": delivery_target(a.target),
                    "status": a.status,
                    "attempts": int(a.attempts),
                    "last_status": a.last_status,
                    "last_error": a.last_error,
                    "next_attempt_at": _iso(a.next_attempt_at)
                    if a.status == outbox.FAILED
                    else None,
                    "created_at": _iso(a.created_at),
                }
                for a in failing
            ],
        },
    }


def delivery_target(target: str) -> str:
    """Where an action goes, as a read-only viewer may see it: a URL's scheme and host only
    (webhook URLs often carry their secret in the path or query, as Slack's do)."""
    where = urlsplit(target)
    if where.scheme and where.hostname:
        port = f":{where.port}" if where.port else ""
        return f"{where.scheme}://{where.hostname}{port}"
    return target


def read_cluster(engine: Engine, source: str, ticket_id: str) -> dict[str, Any] | None:
    """One cluster (from the view) and its tickets, the root first; None if it has none."""
    with Session(engine) as s:
        row = s.execute(
            select(CLUSTERS).where(
                CLUSTERS.c.canonical_source == source, CLUSTERS.c.canonical_ticket_id == ticket_id
            )
        ).first()
        if row is None:
            return None
        d = db.DecisionRow
        members = list(
            s.scalars(
                select(d)
                .where(d.canonical_source == source, d.canonical_ticket_id == ticket_id)
                .order_by((d.route == "duplicate"), d.decided_at, d.id)
                .limit(MEMBERS_SHOWN)
            )
        )
        tickets = [
            {
                "source": m.source,
                "ticket_id": m.ticket_id,
                "route": m.route,
                "score": m.score,
                "matched": f"{m.matched_source}:{m.matched_ticket_id}"
                if m.matched_ticket_id is not None
                else None,
                "decided_at": _iso(m.decided_at),
                "subject": m.subject,
                "root": m.source == source and m.ticket_id == ticket_id,
            }
            for m in members
        ]
    return {
        "source": source,
        "ticket_id": ticket_id,
        "size": int(row.size),
        "first_seen": _iso(row.first_seen),
        "last_seen": _iso(row.last_seen),
        "subject": row.subject,
        "queue": row.queue,
        "tickets": tickets,
        "root_decided": any(t["root"] for t in tickets),
    }


# --- the review queue and what reviews measured ---------------------------------------------

REVIEW_ROUTES = ("duplicate", "suggest")
EXCERPT_CHARS = 400
# Matches shown per decision: a decision lists up to TRIAGE_TOP_K (≤ 100), an agent reads
# the best few.
REVIEW_MATCHES = 5


def review_filters(route: str | None, queue: str | None, source: str | None) -> list[Any]:
    """The review queue's WHERE: `duplicate` / `suggest` decisions no agent has judged yet,
    narrowed to a route, queue and source when given."""
    d, f = db.DecisionRow, db.FeedbackRow
    if route and route not in REVIEW_ROUTES:
        raise BadQuery("route", f"route must be one of {', '.join(REVIEW_ROUTES)}")
    judged = select(f.id).where(f.source == d.source, f.ticket_id == d.ticket_id).exists()
    where = [d.route.in_([route] if route else REVIEW_ROUTES), ~judged]
    if queue:
        where.append(d.queue == queue)
    if source:
        where.append(d.source == source)
    return where


def _texts(s: Session, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Subject and the start of the body of each stored ticket (only that much is read)."""
    if not keys:
        return {}
    t = db.TicketRow
    stmt = select(t.source, t.ticket_id, t.subject, func.substr(t.body, 1, EXCERPT_CHARS + 1))
    found = {}
    for source, ticket_id, subject, head in s.execute(
        stmt.where(db.key_filter(t, [TicketKey(*k) for k in keys]))
    ):
        text = " ".join((head or "").split())
        long = len(head or "") > EXCERPT_CHARS
        found[(source, ticket_id)] = {
            "subject": subject,
            "excerpt": text[:EXCERPT_CHARS].rstrip() + ("…" if long else ""),
        }
    return found


def _shown_matches(row: db.DecisionRow) -> list[dict[str, Any]]:
    matches = list(row.matches or [])
    if not matches and row.matched_ticket_id is not None:
        # rows decided before the match list was recorded name their best match only
        matches = [
            {"source": row.matched_source, "ticket_id": row.matched_ticket_id, "score": row.score}
        ]
    return matches


def review_queue(
    engine: Engine,
    *,
    route: str | None,
    queue: str | None,
    source: str | None,
    limit: int,
    cursor: str | None,
    count: bool = True,
) -> dict[str, Any]:
    """One page of the review queue, newest first, each decision with its new ticket's text
    and its best matches' (from ``triage_tickets``), and how many wait in all (None unless
    ``count``: a scan of the whole queue, which the pages after the first do not show)."""
    d = db.DecisionRow
    where = review_filters(route, queue, source)
    stmt = select(d).where(*where).order_by(d.decided_at.desc(), d.id.desc()).limit(limit + 1)
    if cursor:
        stmt = _older_than(engine, stmt, cursor)
    with Session(engine) as s:
        rows, nxt = _page_of(list(s.scalars(stmt)), limit)
        shown = {r.id: _shown_matches(r)[:REVIEW_MATCHES] for r in rows}
        keys = {(r.source, r.ticket_id) for r in rows} | {
            (str(m["source"]), str(m["ticket_id"])) for ms in shown.values() for m in ms
        }
        texts = _texts(s, keys)
        waiting = (
            int(s.scalar(select(func.count()).select_from(d).where(*where)) or 0) if count else None
        )

    def ticket(source: str, ticket_id: str, fallback_subject: str | None) -> dict[str, Any]:
        text = texts.get((source, ticket_id))
        return {
            "source": source,
            "ticket_id": ticket_id,
            "subject": text["subject"] if text else fallback_subject,
            "excerpt": text["excerpt"] if text else None,
            "stored": text is not None,
            "link": helpdesk_link(source, ticket_id),
        }

    items = []
    for r in rows:
        matches = [
            {
                **ticket(str(m["source"]), str(m["ticket_id"]), None),
                "score": m.get("score"),
            }
            for m in shown[r.id]
        ]
        items.append(
            {
                **ticket(r.source, r.ticket_id, r.subject),
                "route": r.route,
                "score": r.score,
                "queue": r.queue,
                "decided_at": _iso(r.decided_at),
                "redecided_at": _iso(r.redecided_at),
                "matches": matches,
                "more_matches": len(_shown_matches(r)) - len(matches),
            }
        )
    return {"items": items, "next_cursor": nxt, "waiting": waiting}


BAND_WIDTH = 0.05
_PER_UNIT = 20  # bands per unit of score: 1 / BAND_WIDTH, exact in floating point
# A score exactly on a band's edge counts in the band above it, as it does against a
# threshold (``score >= threshold``), even when (score - low) × 20 lands a hair below a whole
# number in floating point (0.95 - 0.85 = 0.09999999999999998).
_EDGE = 1e-9


def band_top(low: float, high: float) -> int:
    """The index of the last 0.05 band from ``low`` that starts below ``high``."""
    return max(math.ceil((high - low) * _PER_UNIT - _EDGE) - 1, 0)


def score_band(score: float, low: float, top: int) -> int:
    """The 0.05-wide band of ``score`` counted from ``low`` (negative below it); a score of
    1 or more in band ``top``. :func:`_band_sql` is the same arithmetic in SQL."""
    if score >= 1:
        return top
    return math.floor((score - low) * _PER_UNIT + _EDGE)


def _band_sql(engine: Engine, score: Any, low: Any, top: Any) -> Any:
    x = (score - low) * _PER_UNIT + bindparam("edge", _EDGE, type_=Float())
    if engine.dialect.name == "postgresql":
        floor: Any = cast(func.floor(x), Integer)
    else:
        # No floor() in every SQLite build: CAST truncates toward zero, so step negatives down.
        floor = cast(x, Integer) - case((x < cast(x, Integer), 1), else_=0)
    return case((score >= 1, top), else_=floor)


def review_stats(engine: Engine, thresholds: Thresholds) -> dict[str, Any]:
    """Per route, and per 0.05 band of score from the route's threshold (duplicate up to 1,
    suggest up to the duplicate threshold): the decisions shown to agents, those judged, and
    the precision measured (confirmed / judged). Judged and labelled exactly as
    `triage calibrate --feedback` labels them (:func:`tickets.feedback.load_verdicts`)."""
    lows = {"duplicate": thresholds.duplicate, "suggest": thresholds.suggest}
    tops = {
        "duplicate": band_top(thresholds.duplicate, 1.0),
        "suggest": band_top(thresholds.suggest, thresholds.duplicate),
    }
    d, f = db.DecisionRow, db.FeedbackRow
    is_dup = d.route == "duplicate"
    low = case(
        (is_dup, bindparam("dup_low", lows["duplicate"], type_=Float())),
        else_=bindparam("sug_low", lows["suggest"], type_=Float()),
    )
    top = case(
        (is_dup, bindparam("dup_top", tops["duplicate"], type_=Integer())),
        else_=bindparam("sug_top", tops["suggest"], type_=Integer()),
    )
    band = _band_sql(engine, d.score, low, top).label("band")
    judged_any = select(f.id).where(f.source == d.source, f.ticket_id == d.ticket_id).exists()
    with Session(engine) as s:
        shown = s.execute(
            select(d.route, band, func.count())
            .where(d.route.in_(REVIEW_ROUTES))
            .group_by(d.route, band)
        ).all()
        waiting = int(
            s.scalar(
                select(func.count()).select_from(d).where(d.route.in_(REVIEW_ROUTES), ~judged_any)
            )
            or 0
        )
    verdicts = load_verdicts(engine)

    cells: dict[str, dict[int | None, list[int]]] = {r: {} for r in REVIEW_ROUTES}
    for route, index, n in shown:
        key = None if index is None else int(index)
        cells[str(route)].setdefault(key, [0, 0, 0])[0] += int(n)
    for j in verdicts.judged:
        if j.route not in cells:
            continue
        index = score_band(j.score, lows[j.route], tops[j.route])
        cell = cells[j.route].setdefault(index, [0, 0, 0])
        cell[1] += 1
        cell[2] += int(j.confirmed)

    def numbers(shown_n: int, judged: int, confirmed: int) -> dict[str, Any]:
        return {
            "shown": shown_n,
            "judged": judged,
            "confirmed": confirmed,
            "vetoed": judged - confirmed,
            "precision": confirmed / judged if judged else None,
        }

    routes = {}
    for route in REVIEW_ROUTES:
        by_band = cells[route]
        indexes = [i for i in by_band if i is not None]
        span = range(min([0, *indexes]), max([tops[route], *indexes]) + 1)
        bands = []
        for i in span:
            band_low = lows[route] + i * BAND_WIDTH
            band_high = 1.0 if i == tops[route] and route == "duplicate" else band_low + BAND_WIDTH
            bands.append(
                {
                    "low": round(band_low, 4),
                    "high": round(band_high, 4),
                    **numbers(*by_band.get(i, [0, 0, 0])),
                }
            )
        total = [sum(c[k] for c in by_band.values()) for k in range(3)]
        routes[route] = {**numbers(*total), "threshold": lows[route], "bands": bands}
    return {
        "band_width": BAND_WIDTH,
        "routes": routes,
        "awaiting": waiting,
        "verdicts": verdicts.verdicts,
        "tied": verdicts.conflicting,
        "unscored": verdicts.unscored,
    }
