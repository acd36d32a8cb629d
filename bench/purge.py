"""Retention purge at scale while a worker decides: how long, and that no decision is lost.

    nice -n 10 python bench/purge.py --size 100000 --live 300 \
        --json bench/results/purge-100k.json | tee bench/results/purge-100k.txt

A fresh database (SQLite by default, ``--database-url`` for PostgreSQL) gets ``--size``
tickets received 400 days ago, each with its decision (a subject) and kept vector (384
float32), written directly in SQL. A real worker process (`triage worker`, embedded Chroma)
starts on a queue of its own; ``--live`` new tickets are published while
``worker.purge.purge(older_than=now - 365 days)`` runs in this process, as the daily
retention run does. Reported: the purge's wall time and rate, the worker's decisions
(all ``--live`` must be decided: 0 lost, 0 failures), and that every old ticket's text and
vector are gone while their decisions stay. The worker deletes the purged keys' vectors from
its store when it reads the tombstones: with ``--chroma`` the old vectors are put in its
store first, and the report has the seconds the worker spent deleting them (from its log)
and the vectors left once it stops (the new tickets' only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from config.settings import load_settings  # noqa: E402
from tickets import db, migrate  # noqa: E402
from tickets.model import Ticket, TicketKey  # noqa: E402

CHUNK = 5000


def fill(engine: db.Engine, size: int) -> float:
    """``size`` old tickets and decisions, in chunks; returns the seconds taken."""
    t0 = time.perf_counter()
    old = datetime.now(UTC) - timedelta(days=400)
    rng = np.random.default_rng(7)
    for start in range(0, size, CHUNK):
        n = min(CHUNK, size - start)
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
        tickets, decisions = [], []
        for j in range(n):
            i = start + j
            tid = f"old{i}"
            tickets.append(
                {
                    "source": "bench",
                    "ticket_id": tid,
                    "subject": f"Old ticket {i} about invoice {i % 977}",
                    "body": f"Customer {i} writes about order {i * 7} and invoice {i % 977}.",
                    "body_format": "text",
                    "queue": None,
                    "tags": [],
                    "created_at": old,
                    "received_at": old,
                    "content_hash": f"{i:064x}",
                    "backfill": False,
                    "model": "bench",
                    "stored_at": old,
                    "vector": vectors[j].tobytes(),
                    "indexed_at": old,
                    "readable": True,
                }
            )
            decisions.append(
                {
                    "source": "bench",
                    "ticket_id": tid,
                    "route": "manual",
                    "score": None,
                    "matched_source": None,
                    "matched_ticket_id": None,
                    "canonical_source": "bench",
                    "canonical_ticket_id": tid,
                    "matches": [],
                    "model": "bench",
                    "duplicate_threshold": 0.85,
                    "suggest_threshold": 0.7,
                    "queue": None,
                    "subject": f"Old ticket {i} about invoice {i % 977}",
                    "received_at": old,
                    "decided_at": old,
                    "latency_ms": 1,
                }
            )
        with engine.begin() as conn:
            conn.execute(db.TicketRow.__table__.insert(), tickets)
            conn.execute(db.DecisionRow.__table__.insert(), decisions)
    return time.perf_counter() - t0


def fill_store(settings: Any, engine: db.Engine, size: int) -> float:
    """The old tickets' kept vectors into the store the worker will open (as its batches
    would have put them); returns the seconds taken."""
    from worker.embedding import make_embedder
    from worker.pipeline import vector_meta
    from worker.store import opened_store

    t0 = time.perf_counter()
    with opened_store(settings, make_embedder(settings)) as store, Session(engine) as session:
        last = 0
        while True:
            rows = session.execute(
                select(db.TicketRow.id, db.TicketRow.ticket_id, db.TicketRow.vector)
                .where(db.TicketRow.id > last)
                .order_by(db.TicketRow.id)
                .limit(CHUNK)
            ).all()
            if not rows:
                break
            last = rows[-1][0]
            keys = [TicketKey("bench", tid) for _, tid, _ in rows]
            vectors = np.stack([np.frombuffer(v, dtype=np.float32) for _, _, v in rows])
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            store.upsert(keys, vectors, [vector_meta(k, k, "manual") for k in keys])
    spent = time.perf_counter() - t0
    print(f"stored {size} vectors in the worker's store in {spent:.1f} s", flush=True)
    return spent


def count_store(settings: Any) -> int:
    from worker.embedding import make_embedder
    from worker.store import opened_store

    with opened_store(settings, make_embedder(settings)) as store:
        return store.count()


_DELETED = re.compile(r"purge: (\d+) purged keys deleted from \S+ in ([\d.]+) s")


def store_deletions(log: str) -> tuple[int, float]:
    """Vectors the worker deleted and the seconds it spent, from its log."""
    found = [(int(n), float(s)) for n, s in _DELETED.findall(log)]
    return sum(n for n, _ in found), sum(s for _, s in found)


def count(engine: db.Engine, model: type, *where: object) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="old tickets to purge")
    parser.add_argument("--live", type=int, default=300, help="new tickets during the purge")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument(
        "--redis-url", default=os.environ.get("TRIAGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--chroma",
        action="store_true",
        help="also put the old tickets' vectors in the worker's store (it deletes them)",
    )
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import redis

    from config.celery_app import create_app
    from tickets.ledger import Ledger
    from tickets.purge import PurgeRunRow
    from tickets.queue import publish
    from worker.purge import purge

    with tempfile.TemporaryDirectory(prefix="triage-bench-purge-") as tmp:
        url = args.database_url or f"sqlite:///{tmp}/triage.db"
        queue = f"bench-purge-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env.update(
            TRIAGE_REDIS_URL=args.redis_url,
            TRIAGE_DATABASE_URL=url,
            TRIAGE_CHROMA_PATH=f"{tmp}/chroma",
            TRIAGE_QUEUE=queue,
            TRIAGE_BATCH_SIZE="16",
            TRIAGE_ENV="development",
        )
        settings = load_settings(
            redis_url=args.redis_url,
            database_url=url,
            chroma_path=Path(tmp) / "chroma",
            queue=queue,
            env="development",
        )
        engine = db.make_engine(url)
        migrate.upgrade(engine)
        fill_s = fill(engine, args.size)
        print(f"filled {args.size} old tickets + decisions in {fill_s:.1f} s", flush=True)
        chroma_fill_s = fill_store(settings, engine, args.size) if args.chroma else None
        client = redis.Redis.from_url(args.redis_url)
        log = Path(tmp) / "worker.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--loglevel", "INFO"],
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
            try:
                while " ready." not in log.read_text(errors="replace"):
                    if proc.poll() is not None:
                        raise SystemExit(log.read_text())
                    time.sleep(0.1)
                app = create_app(settings)
                ledger = Ledger(client, queue)
                live = [
                    Ticket(
                        source="live",
                        ticket_id=f"n{i}",
                        subject=f"New ticket {i}",
                        body=f"My invoice {i % 977} for order {i} looks wrong",
                    )
                    for i in range(args.live)
                ]
                # Half before, half during the purge: the worker decides throughout.
                half = args.live // 2
                list(publish(app, live[:half], queue=queue, ledger=ledger))
                cutoff = datetime.now(UTC) - timedelta(days=365)
                t0 = time.perf_counter()
                published = [False]

                def during(_: int) -> None:
                    if not published[0]:
                        published[0] = True
                        list(publish(app, live[half:], queue=queue, ledger=ledger))

                result = purge(
                    engine,
                    requested_by="bench",
                    older_than=cutoff,
                    redis_client=client,
                    queues=[queue],
                    progress=during,
                )
                purge_s = time.perf_counter() - t0
                if not published[0]:
                    list(publish(app, live[half:], queue=queue, ledger=ledger))
                print(f"purged {result.counts} in {purge_s:.1f} s", flush=True)
                deadline = time.monotonic() + args.timeout
                while count(engine, db.DecisionRow, db.DecisionRow.source == "live") < len(live):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        break
                    time.sleep(0.5)
                live_decided = count(engine, db.DecisionRow, db.DecisionRow.source == "live")
                failures = count(engine, db.FailureRow)
                old_decisions = count(engine, db.DecisionRow, db.DecisionRow.source == "bench")
                old_with_text = count(
                    engine,
                    db.TicketRow,
                    db.TicketRow.source == "bench",
                    (db.TicketRow.body != "") | db.TicketRow.vector.is_not(None),
                )
                old_subjects = count(
                    engine,
                    db.DecisionRow,
                    db.DecisionRow.source == "bench",
                    db.DecisionRow.subject.is_not(None),
                )
                runs = count(engine, PurgeRunRow)
                deleted, delete_s = 0, 0.0
                while args.chroma and deleted < args.size and time.monotonic() < deadline:
                    # The worker's purge thread (every TRIAGE_LEDGER_SWEEP_S) or its batches.
                    time.sleep(1)
                    deleted, delete_s = store_deletions(log.read_text(errors="replace"))
            finally:
                proc.terminate()
                proc.wait(60)
                client.delete(queue, f"triage:ledger:{queue}", f"triage:ledger:{queue}:payload")
        left = count_store(settings) if args.chroma else None
        engine.dispose()
    report = {
        "size": args.size,
        "database": url.split(":")[0],
        "fill_s": round(fill_s, 2),
        "purge_s": round(purge_s, 2),
        "tickets_per_s": round(result.counts["tickets"] / purge_s, 1) if purge_s else None,
        "counts": result.counts,
        "live": len(live),
        "live_decided": live_decided,
        "lost": len(live) - live_decided,
        "failures": failures,
        "old_decisions_kept": old_decisions,
        "old_tickets_with_text": old_with_text,
        "old_decisions_with_subject": old_subjects,
        "audit_runs": runs,
        "chroma_fill_s": None if chroma_fill_s is None else round(chroma_fill_s, 1),
        "chroma_deleted_by_worker": deleted if args.chroma else None,
        "chroma_delete_s": round(delete_s, 2) if args.chroma else None,
        "chroma_vectors_left": left,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = (
        report["lost"] == 0
        and failures == 0
        and old_with_text == 0
        and old_subjects == 0
        and old_decisions == args.size
        and result.counts["tickets"] == args.size
        and (left is None or left == len(live))
    )
    if not ok:
        raise SystemExit("purge bench: a check failed (see the report)")


if __name__ == "__main__":
    main()
