"""How long the decision lock stays idle between holders when it is saturated.

    nice -n 5 python bench/lock_handoff.py --code before=DIR --code after=DIR \
        --processes 4,8 --hold-ms 15 --outside-ms 45 --seconds 20 \
        --json bench/results/lock-handoff.json

For each checkout and process count, that many processes (the checkout's code first on
``sys.path``) take the checkout's real decision lock (worker/decision_lock.py: the Redis lock
and the PostgreSQL fence claim) in a loop for ``--seconds``, each holding it ``--hold-ms`` (a
sleep: a section's work), then working ``--outside-ms`` before asking again (a batch's
embedding and snapshot), as workers do: the lock passes from the holder to a waiter, not
back to the holder. With more processes than (hold + outside) / hold, the lock is never
free for want of a waiter. Reported: sections
per second for the whole group, the lock's busy share (time between a holder's entry and its
release, over the wall time), and the hand-off gap (from one holder's release to the next
holder's entry: how long the lock sat idle with a waiter). With hold time ``T`` and mean gap
``g``, a saturated lock admits ``1 / (T + g)`` sections per second: the gap is what a waiter
that only polls (every 5 ms) adds to every section.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REDIS = "redis://127.0.0.1:6379/13"
ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def child(args: argparse.Namespace) -> None:
    import redis
    from sqlalchemy import create_engine

    from worker.decision_lock import DecisionLock

    client = redis.Redis.from_url(args.redis)
    lock = DecisionLock(client, create_engine(args.database), args.lock, ttl_s=30, wait_s=60)
    hold = args.hold_ms / 1000
    rows = []
    while time.time() < args.start:
        time.sleep(0.001)
    while time.time() < args.start + args.seconds:
        asked = time.time()
        with lock(while_waiting=lambda: None):
            entered = time.time()
            time.sleep(hold)
            left = time.time()
        rows.append((asked, entered, left, time.time()))
        time.sleep(args.outside_ms / 1000)
    print("RESULT " + json.dumps(rows), flush=True)


def measure(code: Path, n: int, args: argparse.Namespace, database: str) -> dict[str, float]:
    lock = f"bench-handoff-{uuid.uuid4().hex[:8]}"
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [
                sys.executable, __file__, "--child", "--database", database, "--redis",
                args.redis, "--lock", lock, "--hold-ms", str(args.hold_ms), "--outside-ms",
                str(args.outside_ms), "--seconds",
                str(args.seconds), "--start", str(start),
            ],
            env={**os.environ, "PYTHONPATH": str(code)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]  # fmt: skip
    sections = []
    for proc in procs:
        out, err = proc.communicate(timeout=args.seconds + 120)
        line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"a child failed:\n{err[-3000:]}")
        sections += json.loads(line[7:])
    sections.sort(key=lambda r: r[1])
    # Entry to release of the Redis lock: ``left`` is before the release, ``done`` after
    # it and the release's publish; the next entry after ``left`` is the hand-off.
    gaps = [
        nxt[1] - cur[2]
        for cur, nxt in itertools.pairwise(sections)
        if nxt[0] < cur[2]  # the next holder was already waiting
    ]
    wall = sections[-1][2] - sections[0][1]
    busy = sum(r[2] - r[1] for r in sections)
    return {
        "code": str(code),
        "processes": n,
        "sections": len(sections),
        "sections_s": round(len(sections) / wall, 1),
        "busy_share": round(busy / wall, 3),
        "gap_p50_ms": round(statistics.median(gaps) * 1000, 2),
        "gap_mean_ms": round(statistics.fmean(gaps) * 1000, 2),
        "gap_p99_ms": round(sorted(gaps)[int(len(gaps) * 0.99)] * 1000, 2),
        "handoffs": len(gaps),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", action="append", default=[], help="NAME=DIR, repeatable")
    p.add_argument("--processes", default="4,8")
    p.add_argument("--hold-ms", type=float, default=15.0)
    p.add_argument("--outside-ms", type=float, default=45.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--redis", default=REDIS)
    p.add_argument("--admin-url", default=ADMIN, help="a PostgreSQL server's admin URL")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", action="store_true")
    p.add_argument("--database")
    p.add_argument("--lock")
    p.add_argument("--start", type=float)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    codes = dict(c.split("=", 1) for c in args.code) or {"this": str(BENCH.parent)}
    print(f"command: {' '.join(sys.argv)}; {os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}")
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    results = []
    for name, code in codes.items():
        # A fresh database per checkout, with that checkout's migrations (the fence table).
        db = f"bench_handoff_{name}_{uuid.uuid4().hex[:6]}"
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
            conn.execute(text(f'CREATE DATABASE "{db}"'))
        url = make_url(args.admin_url).set(database=db).render_as_string(hide_password=False)
        subprocess.run(
            [sys.executable, "-c", "import sys; from sqlalchemy import create_engine; "
             "from tickets import migrate; migrate.upgrade(create_engine(sys.argv[1]))", url],
            env={**os.environ, "PYTHONPATH": code},
            check=True,
        )  # fmt: skip
        results.append({"name": name, "database": db, "url": url, "code": code})
    rows = []
    for rep in range(args.repeat):
        for n in [int(x) for x in args.processes.split(",")]:
            for r in results:
                row = {"name": r["name"], "repeat": rep} | measure(
                    Path(r["code"]), n, args, r["url"]
                )
                rows.append(row)
                print(
                    f"{r['name']:>7} {n} processes, hold {args.hold_ms:g} ms, outside "
                    f"{args.outside_ms:g} ms: "
                    f"{row['sections_s']} sections/s ({row['sections']} in {args.seconds:g} s); "
                    f"lock busy {row['busy_share']:.1%}; hand-off gap p50 {row['gap_p50_ms']} "
                    f"ms, mean {row['gap_mean_ms']} ms, p99 {row['gap_p99_ms']} ms "
                    f"({row['handoffs']} hand-offs)",
                    flush=True,
                )
    with admin.connect() as conn:
        for r in results:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{r["database"]}"'))
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "results": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
