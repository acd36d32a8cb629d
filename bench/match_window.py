"""A match window at scale: the ways to offer only tickets received in the last N days.

    python bench/match_window.py --sizes 100000,1000000 --path /tmp/window-store \
        --json bench/results/match-window.json

Builds (or reuses, with ``--path``) the product's embedded ``VectorStore`` filled with
clustered 384-dim unit vectors (bench/scale.py's generator), each with the worker's metadata
plus ``received_day``: the history spans ``--days`` days, ticket *i* received on day
``i * days / size`` (ids in arrival order, as a helpdesk's are). At each size it times a
worker batch (32 queries, k = 6) with the window off and, for each window of ``--windows``
days (the newest ones), four designs:

- ``where``: Chroma's metadata filter ``{"received_day": {"$gte": cutoff}}`` in the query;
- ``overfetch xM``: the query without a filter for k × M neighbours, those outside the
  window dropped (what a filter on the SQL side would do);
- ``exact``: brute-force cosine over the window's vectors held in memory (NumPy, one matrix
  product per batch): what a worker could keep for a window that holds few tickets;
- ``index``: the product's own window index (worker/window.py, what TRIAGE_MATCH_WINDOW_DAYS
  runs): filled ticket by ticket as a worker's start fills it, evicting at the window's
  start, queried for the batch's Neighbours; its fill time and vector memory are printed.

``--designs`` picks which of ``where``, ``overfetch``, ``exact``, ``index`` to run (the
window-off query is always timed); the ratio printed for ``index`` is its p99 over the
window-off p99 (the target: at most 2).

Recall@6 of each design against the exact in-window top 6 (brute force over every window
vector). Queries are fresh vectors drawn near random cluster centres, so each has
cluster-mates inside and outside the window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scale import DIM, TOP_K, Vectors, disk_mib, pct, rss_mib  # noqa: E402
from tickets.model import TicketKey  # noqa: E402
from worker.pipeline import vector_meta  # noqa: E402
from worker.store import VectorStore  # noqa: E402
from worker.window import WindowIndex  # noqa: E402

K = TOP_K + 1  # what the worker asks for
BATCH = 32
DESIGNS = ("where", "overfetch", "exact", "index")
# The history's day 0; "now" is the end of its last day.
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def day_of(i: int, size: int, days: int) -> int:
    return i * days // size


def fill(store: VectorStore, gen: Vectors, start: int, stop: int, size: int, days: int) -> None:
    step = 5000
    for lo in range(start, stop, step):
        hi = min(stop, lo + step)
        ks = [TicketKey("bench", str(i)) for i in range(lo, hi)]
        metas = [
            {**vector_meta(k, k, "manual"), "received_day": day_of(i, size, days)}
            for i, k in zip(range(lo, hi), ks, strict=True)
        ]
        store.upsert(ks, gen.take(hi - lo), metas)


def all_vectors(store: VectorStore, n: int) -> np.ndarray:
    """Every stored vector in id order (for the exact answers)."""
    out = np.empty((n, DIM), dtype=np.float32)
    for lo in range(0, n, 5000):
        ids = [TicketKey("bench", str(i)).as_id() for i in range(lo, min(n, lo + 5000))]
        got = store._collection.get(ids=ids, include=["embeddings"])
        index = {id_: row for id_, row in zip(got["ids"], got["embeddings"], strict=True)}
        out[lo : lo + len(ids)] = np.asarray([index[i] for i in ids], dtype=np.float32)
    return out


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return (time.perf_counter() - t0) * 1000, result


def summary(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(ms), "p99_ms": pct(ms, 99), "max_ms": max(ms)}


def exact_top(window: np.ndarray, offset: int, queries: np.ndarray) -> list[set[int]]:
    scores = queries @ window.T
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    return [{offset + int(j) for j in row} for row in top]


def ids(hits: list[Any], first: int = 0) -> set[int]:
    """The first K neighbours received inside the window (hits are best first)."""
    inside = [int(n.key.ticket_id) for n in hits if int(n.key.ticket_id) >= first]
    return set(inside[:K])


def run(queries: list[np.ndarray], search: Any) -> tuple[list[float], list[list[set[int]]]]:
    """Each batch through ``search`` (batch -> one set of ids per query): times and ids."""
    ms, found = [], []
    for q in queries:
        t, res = timed(lambda q=q: search(q))
        ms.append(t)
        found.append(res)
    return ms, found


def recall(found: list[list[set[int]]], truth: list[list[set[int]]]) -> float:
    hits = sum(
        len(f & t) for fb, tb in zip(found, truth, strict=True) for f, t in zip(fb, tb, strict=True)
    )
    return hits / sum(len(t) for tb in truth for t in tb)


def window_index(
    vectors: np.ndarray, size: int, days: int, window: int, first: int
) -> tuple[WindowIndex, float, int]:
    """The product's window index as a worker fills it: every ticket of the newest
    ``window`` days plus one more day (evicted at the window's start, as time passes);
    returns it, the fill time (ms) and how many were evicted."""
    index = WindowIndex(window, DIM)
    now = EPOCH + timedelta(days=days)
    older = next((i for i in range(first) if day_of(i, size, days) >= days - window - 1), first)
    t0 = time.perf_counter()
    for i in range(older, size):
        key = TicketKey("bench", str(i))
        received = EPOCH + timedelta(days=day_of(i, size, days))
        index.add(key, vectors[i], received, key, "manual")
    fill_ms = (time.perf_counter() - t0) * 1000
    evicted = index.evict(now)
    return index, fill_ms, evicted


def measure(
    store: VectorStore,
    gen: Vectors,
    vectors: np.ndarray,
    size: int,
    days: int,
    windows: list[int],
    batches: int,
    overfetch: list[int],
    designs: tuple[str, ...] = DESIGNS,
) -> dict[str, Any]:
    queries = [gen.take(BATCH) for _ in range(batches)]
    out: dict[str, Any] = {"stored": size, "windows": []}
    off, _ = run(queries, lambda q: store.query(q, K))
    out["off"] = summary(off)
    for window in windows:
        cutoff = days - window
        first = next(i for i in range(size) if day_of(i, size, days) >= cutoff)
        inside = vectors[first:size]
        truth = [exact_top(inside, first, q) for q in queries]
        row: dict[str, Any] = {"window_days": window, "tickets_in_window": size - first}
        if "where" in designs:
            where = {"received_day": {"$gte": cutoff}}
            ms, found = run(
                queries, lambda q, w=where: [ids(h) for h in store.query(q, K, where=w)]
            )
            row["where"] = {**summary(ms), "recall": recall(found, truth)}
        for m in overfetch if "overfetch" in designs else []:
            ms, found = run(
                queries, lambda q, m=m, f=first: [ids(h, f) for h in store.query(q, K * m)]
            )
            row[f"overfetch_x{m}"] = {**summary(ms), "recall": recall(found, truth)}
        if "exact" in designs:
            ms, found = run(queries, lambda q, v=inside, f=first: exact_top(v, f, q))
            row["exact"] = {
                **summary(ms),
                "recall": recall(found, truth),
                "window_mib": inside.nbytes / 2**20,
            }
        if "index" in designs:
            index, fill_ms, evicted = window_index(vectors, size, days, window, first)
            assert len(index) == size - first, (len(index), size - first)
            ms, found = run(queries, lambda q, ix=index: [ids(h) for h in ix.query(q, K)])
            row["index"] = {
                **summary(ms),
                "recall": recall(found, truth),
                "window_mib": index.nbytes / 2**20,
                "fill_ms": fill_ms,
                "evicted": evicted,
                "p99_over_off": pct(ms, 99) / out["off"]["p99_ms"],
            }
            del index
        out["windows"].append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--days", type=int, default=730, help="the history spans this many days")
    ap.add_argument("--windows", default="7,30,90,365", help="window lengths in days")
    ap.add_argument("--batches", type=int, default=30, help="worker batches of 32 per design")
    ap.add_argument("--overfetch", default="4,16", help="k multipliers without a filter")
    ap.add_argument("--path", type=Path, help="store directory, kept and reused")
    ap.add_argument("--designs", default=",".join(DESIGNS), help="which designs to time")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    designs = tuple(args.designs.split(","))
    unknown = set(designs) - set(DESIGNS)
    if unknown:
        ap.error(f"unknown designs {sorted(unknown)}: choose among {', '.join(DESIGNS)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    windows = [int(w) for w in args.windows.split(",")]
    overfetch = [int(m) for m in args.overfetch.split(",")]
    print(
        f"machine: {os.cpu_count()} cores; python {platform.python_version()}; "
        f"chromadb {metadata.version('chromadb')}; history {args.days} days; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    results = []
    for size in sizes:
        path = args.path or Path(f"/tmp/match-window-{os.getpid()}")
        path = path / f"n{size}"
        store = VectorStore.open(model_id="bench", dimension=DIM, collection="window", path=path)
        try:
            gen = Vectors("clustered")
            have = store.count()
            if have < size:
                t0 = time.perf_counter()
                fill(store, gen, have, size, size, args.days)
                print(
                    f"  n={size}: built {size - have} vectors in {time.perf_counter() - t0:.0f} s"
                )
            vectors = all_vectors(store, size)
            row = measure(
                store, Vectors("clustered", seed=1), vectors, size, args.days, windows,
                args.batches, overfetch, designs,
            )  # fmt: skip
            row["rss_mib"], row["disk_mib"] = rss_mib(), disk_mib(path)
        finally:
            store.close()
        results.append(row)
        print(f"n={size}: window off, 32 queries k={K}: p50 {row['off']['p50_ms']:.1f} ms, "
              f"p99 {row['off']['p99_ms']:.1f} ms")  # fmt: skip
        for w in row["windows"]:
            print(f"  window {w['window_days']} d ({w['tickets_in_window']} tickets):")
            for name in ("where", *(f"overfetch_x{m}" for m in overfetch), "exact", "index"):
                if name not in w:
                    continue
                r = w[name]
                print(
                    f"    {name:13s} p50 {r['p50_ms']:8.1f} ms  p99 {r['p99_ms']:8.1f} ms  "
                    f"recall@{K} {r['recall']:.3f}"
                )
                if name == "index":
                    print(
                        f"    {'':13s} p99 / window-off p99 {r['p99_over_off']:.2f}; "
                        f"{r['window_mib']:.1f} MiB of vectors; filled in {r['fill_ms']:.0f} ms, "
                        f"{r['evicted']} evicted"
                    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
