"""Decision → webhook delivery latency: tickets at a fixed rate into one real worker with
an outbound webhook configured, and the time from each decision row to the moment its signed
POST reached the receiver (which answers 200 at once).

    python bench/actions_latency.py --data cli/samples/demo_tickets.csv -n 300 --rate 20

The worker, its SQLite database, embedded Chroma and the receiver (a thread of this
process) run on this machine, one clock. latency = the receiver's arrival time − decided_at
of the decision row (the worker's clock, taken just before the commit that also inserts
the action). Prints p50 / p90 / p99 / max, and the same from acceptance (received_at).
`--split` runs a `tickets` worker and a `deliveries` worker (TRIAGE_WORKER_ROLE) instead.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from config.celery_app import create_app  # noqa: E402
from config.settings import load_settings  # noqa: E402
from tickets import db, migrate  # noqa: E402
from tickets.model import Ticket  # noqa: E402
from tickets.outbox import ActionRow  # noqa: E402
from tickets.queue import publish  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def receiver() -> tuple[ThreadingHTTPServer, dict[str, float]]:
    """A receiver answering 200 at once; arrival times by ticket id."""
    arrived: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            at = time.time()
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            arrived.setdefault(body["ticket_id"], at)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, arrived


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name} ms: p50 {statistics.median(values):.0f}, p90 {pct(values, 0.9):.0f}, "
        f"p99 {pct(values, 0.99):.0f}, max {max(values):.0f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=ROOT / "cli/samples/demo_tickets.csv")
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--rate", type=float, default=20.0, help="tickets per second")
    ap.add_argument(
        "--without-webhook",
        action="store_true",
        help="no URL configured: the same run's decision latency without the outbox",
    )
    ap.add_argument(
        "--split",
        action="store_true",
        help="a `tickets` worker and a `deliveries` worker (TRIAGE_WORKER_ROLE) instead of one "
        "worker doing both",
    )
    ap.add_argument(
        "--redis-url", default=os.environ.get("TRIAGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = ap.parse_args()

    with args.data.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    while len(rows) < args.n:  # repeat the sample under new ids: repeats are duplicates
        rows += rows
    rows = rows[: args.n]
    server, arrived = receiver()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with tempfile.TemporaryDirectory(prefix="triage-actions-") as tmp:
        queue = f"actions-bench-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env.update(
            TRIAGE_REDIS_URL=args.redis_url,
            TRIAGE_DATABASE_URL=f"sqlite:///{tmp}/triage.db",
            TRIAGE_CHROMA_PATH=f"{tmp}/chroma",
            TRIAGE_QUEUE=queue,
            TRIAGE_LOG_LEVEL="WARNING",
        )
        if not args.without_webhook:
            env["TRIAGE_OUTBOUND_WEBHOOK_URL"] = f"http://127.0.0.1:{server.server_port}/hook"
            env["TRIAGE_OUTBOUND_WEBHOOK_SECRET"] = secret
        engine = db.make_engine(env["TRIAGE_DATABASE_URL"])
        migrate.upgrade(engine)
        roles = ["tickets", "deliveries"] if args.split else ["all"]
        log_paths = [Path(tmp) / f"worker-{role}.log" for role in roles]
        logs = [path.open("wb") for path in log_paths]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--loglevel", "INFO", "--role", role],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for role, log in zip(roles, logs, strict=True)
        ]
        settings = load_settings(
            redis_url=args.redis_url, queue=queue, env="development", database_url="sqlite://"
        )
        app = create_app(settings)
        try:
            for worker, log_path in zip(workers, log_paths, strict=True):
                while " ready." not in log_path.read_text(errors="replace"):
                    if worker.poll() is not None:
                        raise SystemExit(log_path.read_text(errors="replace")[-3000:])
                    time.sleep(0.1)
            start = time.perf_counter()
            for i, row in enumerate(rows):
                time.sleep(max(0.0, start + i / args.rate - time.perf_counter()))
                ticket = Ticket(
                    source="bench",
                    ticket_id=f"B{i:05d}",
                    subject=row.get("subject") or None,
                    body=row["body"],
                    received_at=datetime.now(UTC),
                )
                list(publish(app, [ticket], queue=queue))
            deadline = time.time() + 120
            while time.time() < deadline:
                with Session(engine) as s:
                    n_decided = s.scalar(select(func.count()).select_from(db.DecisionRow))
                if (n_decided or 0) >= len(rows) and (
                    args.without_webhook or len(arrived) >= len(rows)
                ):
                    break
                time.sleep(0.2)
            with Session(engine) as s:
                claimed = dict(
                    s.execute(select(ActionRow.ticket_id, ActionRow.last_attempt_at)).all()
                )
                decided = {
                    tid: (dec, rec)
                    for tid, dec, rec in s.execute(
                        select(
                            db.DecisionRow.ticket_id,
                            db.DecisionRow.decided_at,
                            db.DecisionRow.received_at,
                        )
                    ).all()
                }
        finally:
            app.close()
            for worker in workers:
                worker.terminate()
            for worker, log in zip(workers, logs, strict=True):
                worker.wait(30)
                log.close()
            server.shutdown()

    def ts(value: datetime) -> float:
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()

    accepted_to_decision = [(ts(d) - ts(r)) * 1000 for d, r in decided.values()]
    from_decision = [(arrived[t] - ts(d)) * 1000 for t, (d, _) in decided.items() if t in arrived]
    from_accept = [(arrived[t] - ts(r)) * 1000 for t, (_, r) in decided.items() if t in arrived]
    to_claim = [(ts(claimed[t]) - ts(d)) * 1000 for t, (d, _) in decided.items() if claimed.get(t)]
    claim_to_arrival = [
        (arrived[t] - ts(claimed[t])) * 1000 for t in decided if claimed.get(t) and t in arrived
    ]
    print(
        f"machine: {os.cpu_count()} cores; {len(rows)} tickets at {args.rate}/s, "
        + ("a tickets worker and a deliveries worker, " if args.split else "one worker, ")
        + ("no webhook" if args.without_webhook else "one receiver answering 200 at once")
        + f", {datetime.now(UTC):%Y-%m-%d}"
    )
    print(f"decided {len(decided)}/{len(rows)}, delivered {len(arrived)}/{len(decided)}")
    print(summary("ticket accepted -> decision row", accepted_to_decision))
    if args.without_webhook:
        return
    print(summary("decision row -> webhook received", from_decision))
    print(summary("  of which decision row -> delivery task claims the action", to_claim))
    print(summary("  of which claim -> webhook received", claim_to_arrival))
    print(summary("ticket accepted -> webhook received", from_accept))


if __name__ == "__main__":
    main()
