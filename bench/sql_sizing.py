"""PostgreSQL and Redis space per ticket. PostgreSQL, measured on the product's own tables: N synthetic tickets,
each with its stored text row and its decision row (five matches, as the worker writes them),
inserted into a fresh database at the newest schema; then ``pg_total_relation_size`` per
table (heap + TOAST + indexes) after VACUUM ANALYZE, and bytes per ticket.

    python bench/sql_sizing.py [--admin-url postgresql+psycopg://postgres@127.0.0.1/postgres]
        [--sizes 10000,100000] [--bodies long,short] [--redis-url redis://127.0.0.1:6379/14]

Redis (``--redis-url``, a database of its own: the keys are deleted after): ``MEMORY USAGE``
of what the producer keeps per ticket, written by the product's own code: the dedupe key
(kept TRIAGE_DEDUPE_TTL_S, 7 days by default) and a waiting queue message (one ticket, then
one group of 32 as `triage ingest` sends them).

Bodies: ``long`` are the 200 real bug reports of ``bench/texts/long.txt`` (mean ≈ 2.7 KB,
cut at 4,000 characters), ``short`` the 2,000 titles of ``bench/texts/short.txt`` (≈ 60 B);
subjects always come from ``short.txt``. Two sizes show whether the figure is linear enough
to extrapolate to 1M.
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tickets import db, migrate  # noqa: E402

TEXTS = ROOT / "bench" / "texts"
CHUNK = 5000
TABLES = [db.TicketRow.__tablename__, db.DecisionRow.__tablename__]


def rows(n: int, bodies: list[str], subjects: list[str], seed: int) -> Any:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        received = start + timedelta(seconds=i)
        tid = f"{100000 + i}"
        body = rng.choice(bodies)
        subject = rng.choice(subjects)
        ticket = {
            "source": "zendesk",
            "ticket_id": tid,
            "subject": subject,
            "body": body,
            "queue": rng.choice(["billing", "tech", "shipping", None]),
            "tags": rng.sample(["vip", "mobile", "web", "refund", "bug"], 2),
            "created_at": received,
            "received_at": received,
            "content_hash": uuid.UUID(int=rng.getrandbits(128)).hex * 2,
            "backfill": False,
            "model": "local:all-MiniLM-L6-v2",
            "stored_at": received,
        }
        matches = [
            {
                "source": "zendesk",
                "ticket_id": str(100000 + rng.randrange(max(1, i))),
                "score": round(rng.uniform(0.3, 0.99), 6),
                "fused_score": round(rng.uniform(0.3, 0.99), 6),
            }
            for _ in range(5)
        ]
        best = matches[0]
        route = rng.choice(["duplicate", "suggest", "manual"])
        decision = {
            "source": "zendesk",
            "ticket_id": tid,
            "route": route,
            "score": best["score"],
            "matched_source": "zendesk",
            "matched_ticket_id": best["ticket_id"],
            "canonical_source": "zendesk",
            "canonical_ticket_id": best["ticket_id"] if route == "duplicate" else tid,
            "matches": matches,
            "ranked_by": "hybrid",
            "fused_score": best["fused_score"],
            "model": "local:all-MiniLM-L6-v2",
            "duplicate_threshold": 0.85,
            "suggest_threshold": 0.7,
            "queue": ticket["queue"],
            "subject": subject,
            "received_at": received,
            "decided_at": received + timedelta(milliseconds=150),
            "latency_ms": 150,
            "unknown_ratio": 0.02,
            "reason": None,
        }
        yield ticket, decision


def measure(admin_url: str, n: int, bodies: list[str], subjects: list[str]) -> dict[str, Any]:
    name = f"triage_sizing_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = db.make_engine(url)
    try:
        migrate.upgrade(engine)
        start = time.perf_counter()
        batch_t: list[dict[str, Any]] = []
        batch_d: list[dict[str, Any]] = []
        with engine.begin() as conn:
            for ticket, decision in rows(n, bodies, subjects, seed=n):
                batch_t.append(ticket)
                batch_d.append(decision)
                if len(batch_t) == CHUNK:
                    conn.execute(insert(db.TicketRow), batch_t)
                    conn.execute(insert(db.DecisionRow), batch_d)
                    batch_t, batch_d = [], []
            if batch_t:
                conn.execute(insert(db.TicketRow), batch_t)
                conn.execute(insert(db.DecisionRow), batch_d)
        took = time.perf_counter() - start
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
            sizes = {}
            for table in TABLES:
                total, heap, toast, index = conn.execute(
                    text(
                        "SELECT pg_total_relation_size(:t), pg_relation_size(:t), "
                        "COALESCE(pg_total_relation_size(reltoastrelid), 0), "
                        "pg_indexes_size(:t) FROM pg_class WHERE oid = CAST(:t AS regclass)"
                    ),
                    {"t": table},
                ).one()
                sizes[table] = {"total": total, "heap": heap, "toast": toast, "index": index}
            database = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
            version = conn.execute(text("SHOW server_version")).scalar()
        return {"n": n, "insert_s": took, "tables": sizes, "database": database, "pg": version}
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_per_ticket(url: str, bodies: list[str], subjects: list[str], n: int = 2000) -> str:
    import redis

    from config.celery_app import create_app
    from config.settings import load_settings
    from producer.intake import Intake
    from tickets.model import Ticket

    queue = f"sizing-{uuid.uuid4().hex[:8]}"
    settings = load_settings(env="development", redis_url=url, queue=queue)
    client = redis.Redis.from_url(url)
    app = create_app(settings)
    rng = random.Random(1)
    tickets = [
        Ticket(
            source="zendesk",
            ticket_id=f"{i}",
            subject=rng.choice(subjects),
            body=rng.choice(bodies),
        )
        for i in range(n)
    ]
    try:
        intake = Intake(app, client, queue=queue, dedupe_ttl_s=7 * 24 * 3600)
        for t in tickets:
            intake.accept([t])
        keys = [f"triage:seen:ticket:{t.key.as_id()}" for t in tickets]
        seen = sum(int(client.memory_usage(k) or 0) for k in keys) / n
        single = int(client.memory_usage(queue, samples=0) or 0) / n
        client.delete(queue, *keys, f"triage:ledger:{queue}", f"triage:ledger:{queue}:payload")
        from tickets.queue import publish

        for _ in publish(app, tickets, queue=queue, per_message=32):
            pass
        grouped = int(client.memory_usage(queue, samples=0) or 0) / n
    finally:
        client.delete(queue, f"triage:ledger:{queue}", f"triage:ledger:{queue}:payload")
        client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        client.delete(*[f"triage:seen:ticket:{t.key.as_id()}" for t in tickets])
        app.close()
    return (
        f"  redis: dedupe key {seen:,.0f} B/ticket ({seen * 1e6 / 2**20:,.0f} MiB per 1M within "
        f"the dedupe TTL); waiting message {single:,.0f} B/ticket one per message, "
        f"{grouped:,.0f} B/ticket 32 per message"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--bodies", default="long,short")
    ap.add_argument("--redis-url", help="also measure Redis, in this (private) database")
    args = ap.parse_args()
    subjects = (TEXTS / "short.txt").read_text().splitlines()
    texts = {"long": (TEXTS / "long.txt").read_text().splitlines(), "short": subjects}
    print(
        f"# python bench/sql_sizing.py --sizes {args.sizes} --bodies {args.bodies}"
        + (f" --redis-url {args.redis_url}" if args.redis_url else "")
        + f"  ({platform.node()}, Python {platform.python_version()})"
    )
    for kind in args.bodies.split(","):
        bodies = texts[kind]
        mean = sum(len(b.encode()) for b in bodies) / len(bodies)
        for n in (int(s) for s in args.sizes.split(",")):
            r = measure(args.admin_url, n, bodies, subjects)
            print(
                f"\nbodies={kind} (mean {mean:,.0f} B)  n={n:,}  PostgreSQL {r['pg']}  "
                f"insert {r['insert_s']:.1f} s  database {r['database'] / 2**20:,.1f} MiB"
            )
            print(
                f"  {'table':<20} {'total MiB':>10} {'heap':>8} {'toast':>8} {'index':>8}"
                f" {'B/ticket':>9} {'GiB per 1M':>11}"
            )
            per = 0.0
            for table, s in r["tables"].items():
                b = s["total"] / n
                per += b
                print(
                    f"  {table:<20} {s['total'] / 2**20:>10.1f} {s['heap'] / 2**20:>8.1f} "
                    f"{s['toast'] / 2**20:>8.1f} {s['index'] / 2**20:>8.1f} {b:>9,.0f} "
                    f"{b * 1e6 / 2**30:>11.2f}"
                )
            print(
                f"  {'both':<20} {'':>10} {'':>8} {'':>8} {'':>8} {per:>9,.0f} "
                f"{per * 1e6 / 2**30:>11.2f}",
                flush=True,
            )
        if args.redis_url:
            print(redis_per_ticket(args.redis_url, bodies, subjects), flush=True)


if __name__ == "__main__":
    main()
