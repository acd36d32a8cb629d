"""What hybrid ranking costs the worker: dense-only vs hybrid batches, interleaved in one run.

    python bench/hybrid_cost.py --data $DATA/gitbugs/hadoop/hadoop_bugs.csv \
        --history 2000 --batches 20

($DATA: the public data sets, not shipped; docs/quality.md, "Data", gives their sources.)

Stores ``--history`` tickets (backfill), then triages ``--batches`` batches of
TRIAGE_BATCH_SIZE new tickets, alternating a dense-only worker (TRIAGE_HYBRID_ALPHA=1) and
a hybrid one (the default 0.7, pool 20) on the same store and database: the same texts
under different ids, so both see the same history. Reports per batch the CPU time of the
critical section (Chroma query, BM25, fetch, routing, SQL, upsert) and of the whole
``triage_batch`` call (embedding included), medians over the batches, and the ratio. CPU
time (this process, all threads) rather than wall time: the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import load  # noqa: E402

from config.settings import load_settings  # noqa: E402
from tickets import db, migrate  # noqa: E402
from worker.embedding.local import LocalEmbedder  # noqa: E402
from worker.lexical import LexicalIndex  # noqa: E402
from worker.pipeline import Services, WorkItem, triage_batch  # noqa: E402
from worker.routing import Thresholds  # noqa: E402
from worker.store import VectorStore  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--history", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()

    settings = load_settings()
    batch = settings.batch_size
    tickets = load(args.data, args.history + args.batches * batch)
    history, fresh = tickets[: args.history], tickets[args.history :]
    print(
        f"{platform.node()} · {platform.processor() or platform.machine()} · "
        f"Python {platform.python_version()} · chromadb {metadata.version('chromadb')} · "
        f"{len(history)} stored, {len(fresh)} routed in batches of {batch}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite:///{tmp}/triage.db")
        migrate.upgrade(engine)
        embedder = LocalEmbedder()
        store = VectorStore.open(
            model_id=embedder.model_id,
            dimension=embedder.dimension,
            collection="tickets",
            path=Path(tmp) / "chroma",
        )
        critical: dict[str, list[float]] = {"dense": [], "hybrid": []}

        def timed_lock(**_: object) -> contextlib.AbstractContextManager[None]:
            @contextlib.contextmanager
            def section() -> Iterator[None]:
                start = time.process_time()
                yield
                critical[current].append(time.process_time() - start)

            return section()

        def services(alpha: float) -> Services:
            return Services(
                embedder=embedder,
                store=store,
                engine=engine,
                thresholds=Thresholds(settings.duplicate_threshold, settings.suggest_threshold),
                top_k=settings.top_k,
                subject_weight=settings.subject_weight,
                lock=timed_lock,
                lexical=LexicalIndex() if alpha < 1 else None,
                hybrid_alpha=alpha,
                hybrid_pool=settings.hybrid_pool,
            )

        dense, hybrid = services(1.0), services(settings.hybrid_alpha)
        current = "dense"
        started = time.perf_counter()
        for start in range(0, len(history), 256):
            triage_batch([WorkItem(t, "backfill") for t in history[start : start + 256]], dense)
        print(f"history stored in {time.perf_counter() - started:.1f} s")
        critical = {"dense": [], "hybrid": []}
        whole: dict[str, list[float]] = {"dense": [], "hybrid": []}
        for b in range(args.batches):
            chunk = fresh[b * batch : (b + 1) * batch]
            for name, svc in (("dense", dense), ("hybrid", hybrid)):
                current = name
                items = [
                    WorkItem(t.model_copy(update={"ticket_id": f"{name}-{t.ticket_id}"}))
                    for t in chunk
                ]
                start = time.process_time()
                triage_batch(items, svc)
                whole[name].append(time.process_time() - start)
        assert hybrid.lexical is not None
        print(f"lexical index: {len(hybrid.lexical)} tickets")
        for label, table in (("critical section", critical), ("whole batch", whole)):
            d = statistics.median(table["dense"]) * 1000 / batch
            h = statistics.median(table["hybrid"]) * 1000 / batch
            print(
                f"{label}: CPU ms per ticket, median of {args.batches} batches: "
                f"dense {d:.2f}, hybrid {h:.2f} ({h / d:.2f}x, +{h - d:.2f} ms)"
            )
        store.close()
        engine.dispose()


if __name__ == "__main__":
    main()
