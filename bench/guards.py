"""What the request guards of `triage serve` cost per request, side by side in one run.

    python bench/guards.py [--redis-url redis://127.0.0.1:6379/0] [-n 5000]

- rate limit: one Lua call (EVALSHA) per request, next to a bare PING on the same
  connection (the floor of any Redis round trip);
- backpressure gate: ``QueueGate.full()`` as requests call it (cached for 1 s), next to
  an uncached ``depth()`` (one pipelined LLEN + HLEN);
- JSON depth scan on the GitHub sample (~14 KB) next to ``json.loads`` of the same bytes,
  and on two 1 MiB worst cases (the largest body accepted by default).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer.guards import QueueGate, RateLimiter, json_depth  # noqa: E402


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Median of 5 rounds of the mean time per call, in microseconds."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("-n", type=int, default=5000)
    args = ap.parse_args()

    client = redis.Redis.from_url(args.redis_url)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    limiter = RateLimiter(client, namespace=namespace, rate=1e9, burst=10**9)
    gate = QueueGate(client, namespace, 10**9)
    github = (ROOT / "tests/fixtures/webhooks/github_issues_opened.json").read_bytes()
    worst = b'{"k": "' + b"[{" * (1_048_576 // 2 - 8) + b'"}'
    deep = b"[" * 1_048_576
    n = args.n
    rows = [
        ("redis PING (round-trip floor)", per_call_us(client.ping, n)),
        ("rate limit check (EVALSHA)", per_call_us(lambda: limiter.check("hook:github"), n)),
        ("backpressure gate, as called (1 s cache)", per_call_us(gate.full, n)),
        ("backpressure depth uncached (LLEN+HLEN)", per_call_us(gate.depth, n)),
        ("json_depth, GitHub sample 14 KB", per_call_us(lambda: json_depth(github), n // 10)),
        ("json.loads, GitHub sample 14 KB", per_call_us(lambda: json.loads(github), n // 10)),
        ("json_depth, 1 MiB of brackets in a string", per_call_us(lambda: json_depth(worst), 5)),
        ("json_depth, 1 MiB of [ (1M levels)", per_call_us(lambda: json_depth(deep), 5)),
    ]
    for key in client.scan_iter(f"triage:rate:{namespace}:*"):
        client.delete(key)
    width = max(len(name) for name, _ in rows)
    for name, us in rows:
        print(f"{name:<{width}}  {us:10.1f} µs")


if __name__ == "__main__":
    main()
