"""The garbage collector's full-collection pause in a worker holding the BM25 index.

    nice -n 5 python bench/gc_pause.py --sizes 100000,1000000 --json bench/results/gc-pause.json

In a fresh process per size (the checkout's code first on ``sys.path``), the BM25 index is
rebuilt from the fixture database ``bench_{size}`` (bench/fixture.py) as a worker without a
snapshot does; then three full collections (``gc.collect()``) are timed with the index as it
is, and three after ``gc.freeze()``, which `triage worker` calls once its runtime is built
(worker/runtime.py ``freeze_startup_heap``). Reported: the objects the collector tracks, the
objects frozen, and each pause. CPython pauses every thread for a collection, so a pause in
a decision section holds the cluster's lock (worker/pipeline.py pauses the collector there).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from fixture import size_label  # noqa: E402

DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/bench_{size}"


def pauses(n: int = 3) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        gc.collect()
        out.append(round((time.perf_counter() - t) * 1000, 1))
    return out


def child(database: str) -> None:
    from sqlalchemy import create_engine

    from worker.lexical import LexicalIndex

    index = LexicalIndex()
    t = time.perf_counter()
    index.refresh(create_engine(database))
    built = time.perf_counter() - t
    row = {
        "tickets": len(index),
        "rebuild_s": round(built, 1),
        "tracked": len(gc.get_objects()),
        "full_ms": pauses(),
    }
    gc.freeze()
    row |= {"frozen": gc.get_freeze_count(), "full_frozen_ms": pauses()}
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--code", type=Path, default=BENCH.parent, help="the checkout to measure")
    p.add_argument("--database", default=DATABASE, help="with {size} for the fixture's label")
    p.add_argument("--json", type=Path)
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"command: {' '.join(sys.argv)}; python {sys.version.split()[0]}; {os.cpu_count()} cores")
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        database = args.database.format(size=size_label(size))
        proc = subprocess.run(
            [sys.executable, __file__, "--child", database],
            env={**os.environ, "PYTHONPATH": str(args.code)},
            capture_output=True,
            text=True,
            check=False,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{size}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        row = {"size": size, **json.loads(line[7:])}
        results.append(row)
        print(
            f"{size_label(size):>5}: index rebuilt in {row['rebuild_s']} s; {row['tracked']:,} "
            f"tracked objects; full collection {row['full_ms']} ms; after gc.freeze() "
            f"({row['frozen']:,} frozen) {row['full_frozen_ms']} ms",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
