"""What a Redis Sentinel master switch costs the producer, side by side in one run: tickets
accepted and then lost, and how long it answered 503.

    python bench/sentinel_failover.py [--runs 3] [--rate 200]

Each case starts a private Sentinel group (master, replicas, three sentinels:
tests/redis_sentinel.py), accepts one ticket per call through the product's own ``Intake``
(the code behind the ingest API and the webhooks) at ``--rate`` calls/s, switches the master
one way, goes on for ``--after-s`` (12 s), then reads the new master's queue: an accepted ticket missing
from it is lost.

- ``sigkill``: the master's process is killed (a host lost);
- ``sigterm``: the master is stopped (Redis 7 waits for its replicas first): maintenance;
- ``sentinel-failover``: ``SENTINEL FAILOVER`` while the master runs on;
- each with the servers' ``min-replicas-to-write 1`` / ``min-replicas-max-lag 10``, with one
  replica and with two.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from config.celery_app import create_app  # noqa: E402
from config.redis_client import connect  # noqa: E402
from config.settings import load_settings  # noqa: E402
from producer.intake import Intake  # noqa: E402
from tests.redis_sentinel import MASTER_NAME, SentinelGroup, queued_ids  # noqa: E402
from tickets.model import Ticket  # noqa: E402
from tickets.queue import BrokerUnavailable  # noqa: E402

MIN_REPLICAS = ("min-replicas-to-write 1", "min-replicas-max-lag 10")
CASES = [
    (switch, replicas, guard)
    for switch in ("sigkill", "sigterm", "sentinel-failover")
    for replicas, guard in ((1, False), (1, True), (2, True))
]


def one_run(
    switch: str, replicas: int, guard: bool, rate: float, after_s: float
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        group = SentinelGroup(Path(tmp), replicas=replicas, extra=MIN_REPLICAS if guard else ())
        try:
            settings = load_settings(env="development", redis_url=group.url(), queue="bench")
            app = create_app(settings)
            intake = Intake(app, connect(settings, timeout_s=3), queue="bench", dedupe_ttl_s=600)
            accepted: list[str] = []
            refused_at: list[float] = []
            n = 0

            def accept_for(seconds: float) -> None:
                nonlocal n
                until = time.monotonic() + seconds
                while time.monotonic() < until:
                    n += 1
                    ticket = Ticket(source="bench", ticket_id=f"B{n:06d}", body=f"problem {n}")
                    try:
                        intake.accept([ticket])
                        accepted.append(ticket.ticket_id)
                    except BrokerUnavailable:
                        refused_at.append(time.monotonic())
                    time.sleep(1 / rate)

            accept_for(1.0)
            old = group.master_port()
            node = group.node(old)
            assert node.proc is not None
            if switch == "sigkill":
                node.kill()
            elif switch == "sigterm":
                node.proc.terminate()
            else:
                group.sentinel_client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
            switched_at = time.monotonic()
            accept_for(after_s)
            app.close()
            new, _ = group.wait_promoted(old)
            lost = set(accepted) - queued_ids(group.data_client(new), "bench")
            refused_s = (refused_at[-1] - refused_at[0]) if refused_at else 0.0
            return {
                "accepted": len(accepted),
                "lost": len(lost),
                "refused": len(refused_at),
                "refused_s": round(refused_s, 2),
                "switched": float(new != old),
                "first_refusal_after_s": round(refused_at[0] - switched_at, 2)
                if refused_at
                else -1,
            }
        finally:
            group.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0, help="accept calls per second")
    ap.add_argument("--after-s", type=float, default=12.0, help="accepting after the switch")
    ap.add_argument(
        "--case",
        action="append",
        help="only SWITCH/REPLICAS/MIN_REPLICAS, e.g. sigterm/2/1 (repeatable; default: all)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(
        f"# python bench/sentinel_failover.py --runs {args.runs} --rate {args.rate:g}  "
        f"({platform.node()}, {platform.python_version()}, redis-py {redis.__version__}, "
        f"{SentinelGroup.server_version()})"
    )
    print(
        f"{'switch':<18} {'replicas':>8} {'min-replicas':>12}  {'accepted':>8} "
        f"{'lost (each run)':>16} {'503s':>6} {'503 window s (median)':>22}"
    )
    results = []
    cases = CASES
    if args.case:
        wanted = {tuple(c.split("/")) for c in args.case}
        cases = [c for c in CASES if (c[0], str(c[1]), str(int(c[2]))) in wanted]
    for switch, replicas, guard in cases:
        runs = [one_run(switch, replicas, guard, args.rate, args.after_s) for _ in range(args.runs)]
        results.append({"switch": switch, "replicas": replicas, "guard": guard, "runs": runs})
        lost = "/".join(str(int(r["lost"])) for r in runs)
        print(
            f"{switch:<18} {replicas:>8} {'1' if guard else '0':>12}  "
            f"{int(statistics.median(r['accepted'] for r in runs)):>8} {lost:>16} "
            f"{int(statistics.median(r['refused'] for r in runs)):>6} "
            f"{statistics.median(r['refused_s'] for r in runs):>22.1f}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
