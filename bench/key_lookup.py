"""Looking tickets up by key on PostgreSQL, for a source its statistics have not seen yet.

    nice -n 5 python bench/key_lookup.py --json bench/results/key-lookup-plans.json \\
        | tee bench/results/key-lookup-plans.txt

Every batch reads its tickets by ``(source, ticket_id)`` (tickets/db.py ``key_filter``): the
known tickets before embedding, the section's view check, the purge guard, ``indexed_at``
after the upsert. A helpdesk connected to a table of other helpdesks' tickets is a source
the planner's statistics do not know until the next ANALYZE (autovacuum analyses a table
after 10 % of it changed: 100,000 tickets at 1M), so it estimates that source at one row.

This copies the 100k fixture's database (bench/fixture.py: one source, analysed), turns
autovacuum off on the copy (as a large table between two ANALYZE runs), adds tickets of a
new source in steps and, at each step, looks up 32 of them (and 1,000 of the analysed
source) with both forms of the filter, alternating, ``--repeat`` times each:

- ``per source``: ``source = :s AND ticket_id IN (...)`` per source (key_filter before);
- ``semi-join``: ``(source, ticket_id) IN (SELECT * FROM unnest(:sources, :ids))``
  (key_filter now, on PostgreSQL).

Each line gives the wall time of the lookup through SQLAlchemy (p50, p90) and the index the
plan used.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, or_, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tickets.db import TicketRow, key_filter, make_engine  # noqa: E402
from tickets.model import TicketKey  # noqa: E402

ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
NEW = "newdesk"
_ADD = """
INSERT INTO triage_tickets
    (source, ticket_id, body, tags, received_at, content_hash, backfill, model, stored_at)
SELECT :source, 'k' || g, 'body ' || g, '[]', now(), '', false, 'm', now()
FROM generate_series(CAST(:start AS integer), CAST(:stop AS integer)) AS g
"""


def per_source(keys: list[TicketKey]) -> Any:
    by_source: dict[str, list[str]] = {}
    for key in keys:
        by_source.setdefault(key.source, []).append(key.ticket_id)
    return or_(
        *((TicketRow.source == s) & TicketRow.ticket_id.in_(ids) for s, ids in by_source.items())
    )


FORMS = {"per source": per_source, "semi-join": lambda keys: key_filter(TicketRow, keys)}


def index_used(engine: Engine, statement: Any) -> str:
    compiled = statement.compile(
        dialect=engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar()
    names, todo = set(), [plan[0]["Plan"]]
    while todo:
        node = todo.pop()
        if "Index Name" in node:
            names.add(node["Index Name"])
        elif node["Node Type"] == "Seq Scan":
            names.add("seq scan")
        todo.extend(node.get("Plans", []))
    return "+".join(sorted(names))


def measure(engine: Engine, keys: list[TicketKey], repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in FORMS}
    for _ in range(repeat):
        for name, form in FORMS.items():
            statement = select(TicketRow.id).where(form(keys))
            with engine.connect() as conn:
                start = time.perf_counter()
                found = len(conn.execute(statement).all())
                times[name].append(time.perf_counter() - start)
    for name, form in FORMS.items():
        xs = sorted(times[name])
        out[name] = {
            "p50_ms": round(statistics.median(xs) * 1000, 3),
            "p90_ms": round(xs[int(len(xs) * 0.9)] * 1000, 3),
            "index": index_used(engine, select(TicketRow.id).where(form(keys))),
            "found": found,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--template", default="bench_100k", help="an analysed database")
    parser.add_argument("--admin-url", default=ADMIN)
    parser.add_argument("--steps", default="1000,10000,40000")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    copy = f"{args.template}_keys"
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{args.template}"'))
    engine = make_engine(args.admin_url.rsplit("/", 1)[0] + "/" + copy)
    print(
        f"command: {' '.join(sys.argv)}\ndate: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"machine: {platform.machine()}, python {platform.python_version()}; "
        f"database: a copy of {args.template}, autovacuum off on triage_tickets"
    )
    results: list[dict[str, Any]] = []
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE triage_tickets SET (autovacuum_enabled = false)"))
            stored = conn.execute(text("SELECT count(*) FROM triage_tickets")).scalar_one()
            analysed = conn.execute(text("SELECT source FROM triage_tickets LIMIT 1")).scalar_one()
        added = 0
        for step in [int(s) for s in args.steps.split(",")]:
            with engine.begin() as conn:
                conn.execute(text(_ADD), {"source": NEW, "start": added + 1, "stop": step})
            added = step
            new_keys = [TicketKey(NEW, f"k{step - i}") for i in range(32)]
            old = [
                TicketKey(analysed, t)
                for t in engine.connect()
                .execute(
                    select(TicketRow.ticket_id)
                    .where(TicketRow.source == analysed)
                    .order_by(TicketRow.id)
                    .limit(1000)
                )
                .scalars()
            ]
            for label, keys in (
                (f"32 keys of {NEW} ({added:,} stored, not in the statistics)", new_keys),
                (f"1,000 keys of {analysed} ({stored:,} stored, analysed)", old),
            ):
                row = {"stored_new": added, "lookup": label, **measure(engine, keys, args.repeat)}
                results.append(row)
                print(f"  {label}:")
                for name in FORMS:
                    r = row[name]
                    print(
                        f"    {name:10s} p50 {r['p50_ms']:7.3f} ms  p90 {r['p90_ms']:7.3f} ms  "
                        f"{r['found']} found; index {r['index']}"
                    )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)'))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
