"""Webhook → decision latency: signed GitHub webhooks at a fixed rate into a real
`triage serve`, one real worker, and the time until each decision row exists.

    python bench/webhook_latency.py --data cli/samples/demo_tickets.csv -n 200 --rate 20

Both processes run on this machine with a fresh SQLite database and embedded Chroma. For
each ticket: latency = decided_at (the worker's clock) − the moment the client started
its POST (same machine, same clock). Prints p50 / p90 / p99 / max and the HTTP answer time.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from tickets import db, migrate  # noqa: E402

SECRET = "bench-secret"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=ROOT / "cli/samples/demo_tickets.csv")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0, help="webhooks per second")
    ap.add_argument(
        "--batch-wait-ms", type=int, help="the worker's TRIAGE_BATCH_WAIT_MS (default: its own)"
    )
    ap.add_argument(
        "--redis-url", default=os.environ.get("TRIAGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    args = ap.parse_args()

    with args.data.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[: args.n]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="triage-latency-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env.update(
            TRIAGE_REDIS_URL=args.redis_url,
            TRIAGE_DATABASE_URL=f"sqlite:///{tmp}/triage.db",
            TRIAGE_CHROMA_PATH=f"{tmp}/chroma",
            TRIAGE_QUEUE=f"latency-{uuid.uuid4().hex[:8]}",
            TRIAGE_WEBHOOK_SECRETS=json.dumps({"github": [SECRET]}),
            TRIAGE_LOG_LEVEL="WARNING",
            TRIAGE_ENV="development",  # its signing secret is a short fixed string
            **(
                {"TRIAGE_BATCH_WAIT_MS": str(args.batch_wait_ms)}
                if args.batch_wait_ms is not None
                else {}
            ),
        )
        engine = db.make_engine(env["TRIAGE_DATABASE_URL"])
        migrate.upgrade(engine)
        logs = [open(Path(tmp) / f"{n}.log", "wb") for n in ("worker", "serve")]  # noqa: SIM115
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--loglevel", "INFO"],
                cwd=ROOT,
                env=env,
                stdout=logs[0],
                stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=logs[1],
                stderr=subprocess.STDOUT,
            ),
        ]
        base = f"http://127.0.0.1:{port}"
        try:
            while " ready." not in (Path(tmp) / "worker.log").read_text(errors="replace"):
                time.sleep(0.1)
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=1).ok:
                        break
                except requests.ConnectionError:
                    time.sleep(0.1)
            session = requests.Session()
            sent: dict[str, float] = {}
            http_ms: list[float] = []
            # A fresh repository name per run: the intake remembers ticket keys in Redis for
            # TRIAGE_DEDUPE_TTL_S, so a rerun with the same keys would be answered "duplicate".
            repo = f"bench/helpdesk-{uuid.uuid4().hex[:8]}"
            start = time.perf_counter()
            for i, row in enumerate(rows):
                due = start + i / args.rate
                time.sleep(max(0.0, due - time.perf_counter()))
                payload = {
                    "action": "opened",
                    "issue": {
                        "number": i + 1,
                        "title": row["subject"],
                        "body": row["body"],
                        "created_at": row["created_at"],
                        "labels": [],
                    },
                    "repository": {"full_name": repo},
                }
                body = json.dumps(payload).encode()
                sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                t0 = time.time()
                r = session.post(
                    f"{base}/v1/hooks/github",
                    data=body,
                    headers={
                        "Content-Type": "application/json",
                        "X-GitHub-Event": "issues",
                        "X-GitHub-Delivery": str(uuid.uuid4()),
                        "X-Hub-Signature-256": sig,
                    },
                )
                http_ms.append((time.time() - t0) * 1000)
                assert r.status_code == 202, r.text
                sent[f"{repo}#{i + 1}"] = t0
            deadline = time.time() + 120
            while True:
                with Session(engine) as s:
                    got = dict(
                        s.execute(select(db.DecisionRow.ticket_id, db.DecisionRow.decided_at)).all()
                    )
                if len(got) >= len(sent) or time.time() > deadline:
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                p.terminate()
                p.wait(30)
            for log in logs:
                log.close()
        lat = [
            ((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() - sent[tid]) * 1000
            for tid, at in got.items()
        ]
        print(
            f"machine: {os.cpu_count()} cores; {len(rows)} webhooks at {args.rate}/s, one worker (batch wait {'default' if args.batch_wait_ms is None else f'{args.batch_wait_ms} ms'}), {datetime.now(UTC):%Y-%m-%d}"
        )
        print(f"decided {len(lat)}/{len(sent)}")
        print(
            f"webhook -> decision ms: p50 {statistics.median(lat):.0f}, p90 {pct(lat, 0.9):.0f}, p99 {pct(lat, 0.99):.0f}, max {max(lat):.0f}"
        )
        print(
            f"HTTP answer (202) ms: p50 {statistics.median(http_ms):.1f}, p99 {pct(http_ms, 0.99):.1f}"
        )


if __name__ == "__main__":
    main()
