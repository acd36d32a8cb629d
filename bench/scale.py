"""Chroma at scale: query latency, ingest rate and memory as the store grows.

    python bench/scale.py --sizes 10000,100000,1000000 --budget-s 2700 \
        --json bench/results/scale.json

Uses the product's own ``VectorStore`` (worker/store.py: embedded Chroma, cosine HNSW at
Chroma's defaults, the worker's metadata on every vector) in a fresh temporary directory.
The store is filled with 384-dim unit vectors in upserts of ``--ingest-batch`` (5,000 =
the store's write batch, as backfill and reindex send them); at each size of ``--sizes`` it
measures, with nothing else running in this process:

- query latency of one vector (k = TRIAGE_TOP_K + 1 = 6, what the worker asks for), p50/p99;
- query latency of a worker batch (32 vectors in one call), p50/p99, and per ticket;
- upsert latency of a worker batch (32 new vectors), p50/p99;
- ingest rate over the last stretch, process RSS, and the store's size on disk.

Vectors are ``clustered`` by default: 2,000 random unit centres, each vector a centre plus
noise (a vector and its cluster-mates: cosine ≈ 0.6), which behaves like real sentence embeddings in HNSW;
``--vectors random`` gives isotropic random unit vectors, HNSW's worst case (recall and
insert speed: their intrinsic dimension is the full 384; Malkov & Yashunin, arXiv
1603.09320). Ingest stops at ``--budget-s`` seconds; whatever sizes were reached are
reported with the trend of the ingest rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tickets.model import TicketKey  # noqa: E402
from worker.pipeline import vector_meta  # noqa: E402
from worker.store import VectorStore  # noqa: E402

DIM = 384
TOP_K = 5  # TRIAGE_TOP_K's default; the worker queries top_k + 1


class Vectors:
    def __init__(self, kind: str, seed: int = 0, clusters: int = 2000, noise: float = 0.04):
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        self.centres = self._unit(self.rng.standard_normal((clusters, DIM), dtype=np.float32))
        self.noise = noise

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def take(self, n: int) -> np.ndarray:
        raw = self.rng.standard_normal((n, DIM), dtype=np.float32)
        if self.kind == "clustered":
            raw = self.centres[self.rng.integers(0, len(self.centres), n)] + self.noise * raw
        return self._unit(raw)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def keys(start: int, n: int) -> list[TicketKey]:
    return [TicketKey("bench", str(i)) for i in range(start, start + n)]


def upsert(store: VectorStore, start: int, vectors: np.ndarray) -> None:
    ks = keys(start, len(vectors))
    store.upsert(ks, vectors, [vector_meta(k, k, "manual") for k in ks])


def measure(store: VectorStore, gen: Vectors, stored: int, queries: int) -> dict[str, float]:
    single = []
    for q in gen.take(queries):
        t0 = time.perf_counter()
        store.query(q[None, :], TOP_K + 1)
        single.append((time.perf_counter() - t0) * 1000)
    batch = []
    for _ in range(max(5, queries // 10)):
        q32 = gen.take(32)
        t0 = time.perf_counter()
        store.query(q32, TOP_K + 1)
        batch.append((time.perf_counter() - t0) * 1000)
    # Worker-sized upserts of new tickets (ids past the bulk range, so nothing is overwritten).
    ups = []
    for j in range(max(5, queries // 10)):
        vec = gen.take(32)
        t0 = time.perf_counter()
        upsert(store, 10**9 + stored + 32 * j, vec)
        ups.append((time.perf_counter() - t0) * 1000)
    return {
        "query1_p50_ms": statistics.median(single),
        "query1_p99_ms": pct(single, 99),
        "query32_p50_ms": statistics.median(batch),
        "query32_p99_ms": pct(batch, 99),
        "query32_per_ticket_ms": statistics.median(batch) / 32,
        "upsert32_p50_ms": statistics.median(ups),
        "upsert32_p99_ms": pct(ups, 99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--vectors", choices=["clustered", "random"], default="clustered")
    ap.add_argument("--ingest-batch", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=200, help="single queries per size")
    ap.add_argument("--budget-s", type=float, default=2700, help="stop ingesting after this")
    ap.add_argument("--path", type=Path, help="store directory (default: a temporary one)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    versions = {d: metadata.version(d) for d in ("chromadb", "numpy")}
    print(
        f"machine: {os.cpu_count()} cores; python {platform.python_version()}; {versions}; "
        f"vectors {args.vectors}, 384-dim; ingest batch {args.ingest_batch}; k={TOP_K + 1}",
        flush=True,
    )
    gen = Vectors(args.vectors)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        path = args.path or Path(tmp) / "chroma"
        store = VectorStore.open(model_id="bench", dimension=DIM, collection="scale", path=path)
        stored = 0
        started = time.perf_counter()
        stopped_early = False
        try:
            for size in sizes:
                seg_start, seg_from = time.perf_counter(), stored
                while stored < size:
                    if time.perf_counter() - started > args.budget_s:
                        stopped_early = True
                        break
                    n = min(args.ingest_batch, size - stored)
                    upsert(store, stored, gen.take(n))
                    stored += n
                    if stored % 50_000 == 0 or stored == size:
                        el = time.perf_counter() - seg_start
                        print(
                            f"  {stored} stored, {(stored - seg_from) / el:.0f} vectors/s over "
                            f"this stretch, RSS {rss_mib():.0f} MiB",
                            flush=True,
                        )
                seg_rate = (stored - seg_from) / (time.perf_counter() - seg_start)
                row: dict[str, Any] = {
                    "stored": stored,
                    "ingest_from": seg_from,
                    "ingest_vectors_s": seg_rate,
                    "elapsed_s": time.perf_counter() - started,
                }
                row.update(measure(store, gen, stored, args.queries))
                row["rss_mib"] = rss_mib()
                row["disk_mib"] = disk_mib(path)
                rows.append(row)
                print(
                    f"{stored} stored (ingest {seg_from}->{stored}: {seg_rate:.0f}/s): query k=6 "
                    f"p50 {row['query1_p50_ms']:.1f} ms, p99 {row['query1_p99_ms']:.1f} ms; 32 per "
                    f"call p50 {row['query32_p50_ms']:.0f} ms ({row['query32_per_ticket_ms']:.2f} "
                    f"ms/ticket), p99 {row['query32_p99_ms']:.0f} ms; upsert 32 p50 "
                    f"{row['upsert32_p50_ms']:.0f} ms, p99 {row['upsert32_p99_ms']:.0f} ms; RSS "
                    f"{row['rss_mib']:.0f} MiB; disk {row['disk_mib']:.0f} MiB",
                    flush=True,
                )
                if stopped_early:
                    print(f"budget of {args.budget_s:.0f} s spent at {stored} vectors", flush=True)
                    break
        finally:
            store.close()
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "versions": versions,
                    "vectors": args.vectors,
                    "ingest_batch": args.ingest_batch,
                    "budget_s": args.budget_s,
                    "stopped_early": stopped_early,
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
