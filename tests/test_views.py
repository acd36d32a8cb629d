"""The BI views of migration 0004, on SQLite and PostgreSQL: same rows, same meaning.

Rows are written straight into the tables with SQLAlchemy Core (as the worker writes them:
timezone-aware UTC datetimes), then each view is read with plain SQL, as a BI tool would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, insert, inspect, text

from tickets import db, migrate

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
VIEWS = {
    "triage_routes_hourly",
    "triage_routes_daily",
    "triage_duplicate_clusters",
    "triage_score_distribution",
    "triage_failures_by_reason",
}


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


def decision(
    ticket_id: str,
    route: str,
    score: float | None,
    decided_at: datetime,
    *,
    queue: str | None = "billing",
    canonical: str | None = None,
    subject: str | None = None,
    source: str = "t",
) -> dict[str, Any]:
    return {
        "source": source,
        "ticket_id": ticket_id,
        "route": route,
        "score": score,
        "matched_source": None,
        "matched_ticket_id": None,
        "canonical_source": source,
        "canonical_ticket_id": canonical or ticket_id,
        "matches": [],
        "model": "local:all-MiniLM-L6-v2",
        "duplicate_threshold": 0.85,
        "suggest_threshold": 0.70,
        "queue": queue,
        "subject": subject,
        "received_at": decided_at - timedelta(seconds=1),
        "decided_at": decided_at,
        "latency_ms": 1000,
    }


def add_decisions(engine: Engine, *rows: dict[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(db.DecisionRow), list(rows))


def utc(value: Any) -> datetime:
    """A view's timestamp as an aware UTC datetime (SQLite hands back its text form)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime), value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read(engine: Engine, sql: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # A session in another time zone must not move the buckets: they are UTC.
            conn.execute(text("SET TIME ZONE 'Asia/Kolkata'"))
        return [dict(r._mapping) for r in conn.execute(text(sql))]


def test_migration_creates_and_drops_the_views(database_url: str, engine: Engine) -> None:
    assert migrate.head_revision() >= "0004"
    assert set(inspect(engine).get_view_names()) >= VIEWS
    cfg = migrate._config(database_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    assert not VIEWS & set(inspect(engine).get_view_names())
    assert "triage_decisions" in inspect(engine).get_table_names()
    migrate.upgrade(engine)
    assert set(inspect(engine).get_view_names()) >= VIEWS


def test_routes_hourly_and_daily(engine: Engine) -> None:
    add_decisions(
        engine,
        decision("1", "duplicate", 0.86, T0),  # 09:00:00 opens the 09 bucket
        decision("2", "duplicate", 0.90, T0 + timedelta(minutes=59, seconds=59.999)),
        decision("3", "duplicate", 0.95, T0 + timedelta(hours=1)),  # 10:00:00 is the next one
        decision("4", "manual", None, T0 + timedelta(hours=1, minutes=30), queue=None),
        decision("5", "manual", 0.50, T0 + timedelta(hours=1, minutes=31), queue=None),
        decision("6", "suggest", 0.75, datetime(2026, 11, 28, 0, 0, tzinfo=UTC)),
        decision("7", "suggest", 0.71, datetime(2026, 11, 27, 23, 59, 59, tzinfo=UTC)),
    )
    hourly = {
        (utc(r["bucket"]), r["queue"], r["route"]): (r["decisions"], r["avg_score"])
        for r in read(engine, "SELECT * FROM triage_routes_hourly")
    }

    def h(hour: int, day: int = 27) -> datetime:
        return datetime(2026, 11, day, hour, tzinfo=UTC)

    assert hourly.keys() == {
        (h(9), "billing", "duplicate"),
        (h(10), "billing", "duplicate"),
        (h(10), None, "manual"),
        (h(23), "billing", "suggest"),
        (h(0, 28), "billing", "suggest"),
    }
    assert hourly[(h(9), "billing", "duplicate")] == (2, pytest.approx(0.88))
    assert hourly[(h(10), "billing", "duplicate")] == (1, pytest.approx(0.95))
    assert hourly[(h(10), None, "manual")] == (2, pytest.approx(0.50))  # the null score skipped

    daily = {
        (utc(r["bucket"]), r["queue"], r["route"]): (r["decisions"], r["avg_score"])
        for r in read(
            engine, "SELECT bucket, queue, route, decisions, avg_score FROM triage_routes_daily"
        )
    }
    d27, d28 = h(0), h(0, 28)
    assert daily == {
        (d27, "billing", "duplicate"): (3, pytest.approx(0.90333333)),
        (d27, None, "manual"): (2, pytest.approx(0.50)),
        (d27, "billing", "suggest"): (1, pytest.approx(0.71)),
        (d28, "billing", "suggest"): (1, pytest.approx(0.75)),
    }
    # the README's example: decisions per route over a period, summed across queues
    per_route = read(
        engine,
        "SELECT route, sum(decisions) AS n FROM triage_routes_daily GROUP BY route ORDER BY route",
    )
    assert [(r["route"], int(r["n"])) for r in per_route] == [
        ("duplicate", 3),
        ("manual", 2),
        ("suggest", 2),
    ]


def test_duplicate_clusters(engine: Engine) -> None:
    def m(minutes: int) -> datetime:
        return T0 + timedelta(minutes=minutes)

    add_decisions(
        engine,
        decision("A", "manual", 0.40, m(0), subject="App crashes at login", queue="mobile"),
        decision("B", "duplicate", 0.91, m(5), canonical="A"),
        decision("C", "duplicate", 0.88, m(30), canonical="A"),
        decision("D", "duplicate", 0.87, m(12), canonical="A"),  # matched C: a chain, same root
        decision("S", "suggest", 0.75, m(40)),  # points at itself: no cluster
        decision("M", "manual", None, m(41)),
        # a root that is backfilled history: no decision, only a ticket row
        decision("E", "duplicate", 0.93, m(50), canonical="H1"),
        decision("F", "duplicate", 0.90, m(55), canonical="H1"),
        decision("G", "duplicate", 0.86, m(56), canonical="H2"),  # root unknown to SQL
    )
    with engine.begin() as conn:
        conn.execute(
            insert(db.TicketRow),
            [
                {
                    "source": "t",
                    "ticket_id": "H1",
                    "subject": "Refund never arrived",
                    "body": "b",
                    "queue": "billing",
                    "tags": [],
                    "created_at": None,
                    "received_at": T0 - timedelta(days=30),
                    "content_hash": "x",
                    "backfill": True,
                    "model": "local:all-MiniLM-L6-v2",
                    "stored_at": T0 - timedelta(days=30),
                }
            ],
        )
    rows = read(engine, "SELECT * FROM triage_duplicate_clusters ORDER BY size DESC, last_seen")
    got = {
        r["canonical_ticket_id"]: (
            r["canonical_source"],
            r["size"],
            r["duplicates"],
            utc(r["first_seen"]),
            utc(r["last_seen"]),
            r["subject"],
            r["queue"],
        )
        for r in rows
    }
    assert got == {
        "A": ("t", 4, 3, m(0), m(30), "App crashes at login", "mobile"),
        "H1": ("t", 3, 2, T0 - timedelta(days=30), m(55), "Refund never arrived", "billing"),
        "H2": ("t", 2, 1, m(56), m(56), None, None),
    }
    assert [r["canonical_ticket_id"] for r in rows] == ["A", "H1", "H2"]


def test_score_distribution(engine: Engine) -> None:
    scores = {
        "a": ("duplicate", 0.85, 17),  # a threshold sits on a bucket's lower edge
        "b": ("suggest", 0.8499, 16),
        "c": ("suggest", 0.70, 14),
        "d": ("manual", 0.6999, 13),
        "e": ("duplicate", 1.0, 19),  # 1.0 counts in the top bucket
        "f": ("duplicate", 1.0000001, 19),  # float noise above 1 too
        "g": ("duplicate", 0.97, 19),
        "h": ("manual", -0.03, -1),  # floor, not truncation, below zero
        "i": ("manual", -0.05, -1),
        "j": ("manual", -0.051, -2),
        "k": ("manual", 0.0, 0),
        "l": ("manual", None, None),  # no history: no score, not in the distribution
        "m": ("manual", 0.0499, 0),
    }
    add_decisions(
        engine,
        *[
            decision(i, route, score, T0 + timedelta(seconds=n))
            for n, (i, (route, score, _)) in enumerate(scores.items())
        ],
    )
    expected: dict[tuple[str, int], int] = {}
    for route, _, bucket in scores.values():
        if bucket is not None:
            expected[(route, bucket)] = expected.get((route, bucket), 0) + 1
    rows = read(engine, "SELECT * FROM triage_score_distribution")
    assert {(r["route"], r["bucket_index"]): r["decisions"] for r in rows} == expected
    for r in rows:
        assert r["score_low"] == pytest.approx(r["bucket_index"] * 0.05)
        assert r["score_high"] == pytest.approx((r["bucket_index"] + 1) * 0.05)
    top = next(r for r in rows if r["bucket_index"] == 17)
    assert (top["score_low"], top["score_high"]) == (0.85, 0.9)


def test_failures_by_reason(engine: Engine) -> None:
    rows = [
        ("1", "EmbeddingRejected", T0),
        ("2", "EmbeddingRejected", T0 + timedelta(hours=2)),
        ("3", "EmbeddingRejected", T0 + timedelta(hours=1)),
        ("4", "InvalidMessage", T0 + timedelta(minutes=5)),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(db.FailureRow),
            [
                {
                    "source": "t",
                    "ticket_id": i,
                    "error_type": kind,
                    "reason": f"{kind} on ticket {i}",
                    "attempts": 1,
                    "payload": {"ticket_id": i},
                    "failed_at": at,
                }
                for i, kind, at in rows
            ],
        )
    got = {
        r["error_type"]: (r["failures"], utc(r["last_failed_at"]))
        for r in read(engine, "SELECT * FROM triage_failures_by_reason")
    }
    assert got == {
        "EmbeddingRejected": (3, T0 + timedelta(hours=2)),
        "InvalidMessage": (1, T0 + timedelta(minutes=5)),
    }


def readme_examples() -> list[tuple[str, str]]:
    """(comment, statement) for each example query of the docs' views section."""
    readme = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text()
    section = readme.split("## SQL views for BI tools", 1)[1].split("\n## ", 1)[0]
    out = []
    for block in section.split("```sql\n")[1:]:
        comment = ""
        for statement in block.split("```", 1)[0].split(";"):
            lines = [ln for ln in statement.strip().splitlines() if ln.strip()]
            sql = " ".join(ln for ln in lines if not ln.startswith("--"))
            comment = " ".join(ln for ln in lines if ln.startswith("--")) or comment
            if sql:
                out.append((comment, sql))
    return out


def test_readme_examples_run(engine: Engine) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    add_decisions(
        engine,
        decision("A", "manual", 0.4, now - timedelta(days=1), subject="Crash"),
        decision("B", "duplicate", 0.9, now - timedelta(hours=2), canonical="A"),
        decision("C", "suggest", 0.72, now),
    )
    examples = readme_examples()
    assert len(examples) >= 6
    ran = 0
    for comment, sql in examples:
        other = "(SQLite)" if engine.dialect.name == "postgresql" else "(PostgreSQL)"
        if other in comment:
            continue
        rows = read(engine, sql)
        ran += 1
        if "per route per day" in comment or "(SQLite)" in comment:
            assert {r["route"]: int(r["decisions"]) for r in rows} == {
                "manual": 1,
                "duplicate": 1,
                "suggest": 1,
            }, sql
        if "biggest duplicate clusters" in comment:
            assert [(r["canonical_ticket_id"], r["size"]) for r in rows] == [("A", 2)]
    assert ran >= 5
