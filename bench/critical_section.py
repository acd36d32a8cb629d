"""The decision critical section, measured: per batch, with several worker processes, and the
bounds beyond it, for the code of one or more checkouts side by side.

    # time inside the section per batch of 32 at 10k / 100k / 1M stored, before and after
    nice -n 10 python bench/critical_section.py section --code before=/work/main \\
        --code after=/work/wt-section --sizes 10000,100000,1000000 --batches 40
    # 1, 2 and 4 real `triage worker` processes against the 100k fixture
    nice -n 10 python bench/critical_section.py workers --code before=/work/main \\
        --code after=/work/wt-section --size 100000 --processes 1,2,4 --tickets 2048
    # what bounds the cluster next: Chroma server upserts, decision-row inserts, Redis
    nice -n 10 python bench/critical_section.py bounds --size 100000

Every figure runs against the fixture of bench/fixture.py (PostgreSQL ``bench_{size}`` and the
``bench-{size}`` collection of ``FIXTURES/chroma``), served here by ``chroma run`` and copied per
run (``CREATE DATABASE ... TEMPLATE``) so that each checkout starts from the same rows and
migrates its own copy. The new tickets are the fixture generator's, beyond the stored ones,
so they fall in the stored clusters and some are duplicates of stored tickets.

How each figure is taken:

- ``section``: one process per checkout and size, with that checkout first on ``sys.path``,
  builds the worker's runtime (``worker.runtime.build_runtime``: the real Chroma client, the
  decision lock on Redis + PostgreSQL, the lexical index caught up from SQL) and drives
  ``prepare_batch`` / ``finish_batch`` on batches of 32. ``Services.lock`` is wrapped: the
  section is the time from asking for the lock to releasing it (uncontended here, so it
  includes one Redis acquire and the fence claim): what one batch holds every other worker
  out for. Its share is section / (prepare + finish) of the same batch. The embedder is the
  real one (its cost is paid) but returns the fixture's vector for a fixture text, so the
  tickets meet their stored cluster-mates (``FixtureEmbedder``). ``--contended N``: between
  each batch's snapshot and its section, N tickets of the same clusters are committed as
  another worker's would be (with their vectors), so the section catches them up: the cost
  of a batch whose view changed while it waited for the lock. Each line also says how many
  batches were routed again inside the section (a checkout with ``pipeline._route``) and
  the garbage collector's time while the section was held; ``--profile DIR`` writes a
  cProfile of the section bodies, one stats file per child.
- ``workers``: N real worker processes (the checkout's `triage worker`, Celery threads pool,
  TRIAGE_CHROMA_URL set so the decision lock is used) consume ``--tickets`` published at once
  as `triage ingest` does (32 per message); tickets/s from the first publish to the last
  decision row, CPU seconds per ticket from /proc (workers, the Chroma server, and the
  PostgreSQL backends of the database), and each batch's lock wait (asking → holding) and
  hold from the same wrapper, written by every process to a JSON-lines file.
- ``bounds``: Chroma server upserts of 32 and of 1,000 new vectors over HTTP into the fixture
  collection, ``db.save_batch`` of 32 tickets + 32 decisions per transaction into a copy of the
  fixture database, and Redis publish (the product's ``publish``) / consume (kombu) of messages
  of 32 tickets.

The lock-bound cluster ceiling is ``batch_size / section_time`` tickets/s: the lock admits one
batch at a time, so no number of workers decides more than one batch per section time.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from fixture import size_label

BENCH = Path(__file__).resolve().parent
FIXTURES = Path("/work/fixtures/bench")
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
REDIS = "redis://127.0.0.1:6379/13"
QUEUE = "bench16"
NEW_SOURCE = "benchnew"
# New tickets come from generator chunks from here on: ticket ids 5,000,000+, never stored.
NEW_CHUNK = 500
BATCH = 32
# The `chroma run` server's pid, for its CPU time (set by the orchestrator).
CHROMA_PID = int(os.environ.get("BENCH_CHROMA_PID", "0"))
# ``section --profile DIR``: the section's body under cProfile, one stats file per child.
PROFILE = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
# While a section is held: the garbage collector's pauses in it (seconds, and full
# collections), and how often the checkout routes a batch inside it (its plan failed).
HELD: dict[str, Any] = {"on": False, "gc": 0.0, "gc_full": 0, "routes": 0, "caught_up": 0}
# ``section --phases``: wall seconds inside the held section per step (:func:`time_phases`).
PHASES: dict[str, float] = {}
# Over the measured batches, held or not: each full collection's pause (seconds), and the
# objects the collector freed (reference cycles, which only it frees).
FULL: dict[str, Any] = {"on": False, "pauses": [], "freed": 0}
# The worker's own decision lock, unwrapped (``section --holders``: the other holders').
RAW_LOCK: list[Any] = []
_GC_START = [0.0]


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _GC_START[0] = time.perf_counter()
        return
    if FULL["on"]:
        FULL["freed"] += info["collected"]
        if info["generation"] == 2:
            FULL["pauses"].append(time.perf_counter() - _GC_START[0])
    if HELD["on"]:
        HELD["gc"] += time.perf_counter() - _GC_START[0]
        HELD["gc_full"] += info["generation"] == 2


gc.callbacks.append(_gc_timer)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def ms(x: float) -> float:
    return round(x * 1000, 2)


# --- in the measured process (the checkout under test is first on sys.path) -------------------


def new_tickets(n: int, offset: int = 0) -> list[Any]:
    """``n`` new tickets from the fixture generator (chunks NEW_CHUNK + ...), as Tickets."""
    from fixture import CHUNK, Generator, queue_of

    from tickets.model import Ticket

    gen = Generator()
    out: list[Any] = []
    c = NEW_CHUNK + offset // CHUNK
    skip = offset % CHUNK
    while len(out) < n:
        chunk = gen.chunk(c)
        for k in range(skip, CHUNK):
            if len(out) == n:
                break
            out.append(
                (
                    Ticket(
                        source=NEW_SOURCE,
                        ticket_id=f"n{int(chunk['ids'][k])}",
                        subject=chunk["subjects"][k],
                        body=chunk["bodies"][k],
                        queue=queue_of(int(chunk["cluster"][k])),
                    ),
                    chunk["vectors"][k],
                )
            )
        c, skip = c + 1, 0
    return out


def vector_table(pairs: list[Any]) -> dict[str, np.ndarray]:
    """Text -> fixture vector, for the texts the pipeline embeds (text and subject)."""
    from worker.text import embedding_text, normalise_whitespace

    table: dict[str, np.ndarray] = {}
    for ticket, vector in pairs:
        table[embedding_text(ticket)] = vector
        if ticket.subject:
            table[normalise_whitespace(ticket.subject)] = vector
    return table


class FixtureEmbedder:
    """The real embedder (its cost is paid) returning the fixture's vector for a fixture text:
    the stored vectors are synthetic, so a real vector would never meet its cluster."""

    def __init__(self, real: Any, table: dict[str, np.ndarray]) -> None:
        self._real, self._table = real, table

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def embed(self, texts: Any) -> Any:
        out = np.array(self._real.embed(texts), dtype=np.float32, copy=True)
        for k, text in enumerate(texts):
            vector = self._table.get(text)
            if vector is not None:
                out[k] = vector
        return out


class Sink:
    """Per-batch lock timings: kept in memory and, for worker processes, appended to a file."""

    def __init__(self, path: Path | None = None) -> None:
        self.records: list[dict[str, float]] = []
        self._file = path.open("a") if path else None
        self._lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)
            if self._file is not None:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()


def timed_lock(lock: Callable[..., Any], sink: Sink) -> Callable[..., Any]:
    """``Services.lock`` with timers: wait = asking → holding, held = holding → released."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        @contextlib.contextmanager
        def section() -> Iterator[Any]:
            t0 = time.perf_counter()
            with lock(*args, **kwargs) as inner:
                t1 = time.perf_counter()
                c1, s1 = time.process_time(), proc_cpu_s(CHROMA_PID)
                HELD.update(on=True, gc=0.0, gc_full=0, routes=0, caught_up=0)
                PHASES.clear()
                if PROFILE is not None:
                    PROFILE.enable()
                try:
                    yield inner
                finally:
                    if PROFILE is not None:
                        PROFILE.disable()
                    HELD["on"] = False
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            c3, s3 = time.process_time(), proc_cpu_s(CHROMA_PID)
            sink.add(
                {
                    "pid": os.getpid(),
                    "at": time.time(),
                    "wait": t1 - t0,
                    "body": t2 - t1,
                    "held": t3 - t1,
                    "section": t3 - t0,
                    # CPU seconds while held: this process (all its threads) and the Chroma
                    # server; on a shared machine they say what wall time cannot.
                    "cpu_self": c3 - c1,
                    "cpu_chroma": s3 - s1,
                    "gc": HELD["gc"],
                    "gc_full": HELD["gc_full"],
                    "routed_in_section": HELD["routes"],
                    "caught_up": HELD["caught_up"],
                    "phases": dict(PHASES),
                }
            )

        return section()

    return wrapper


def instrument(sink: Sink, table: dict[str, np.ndarray], phases: dict[str, float]) -> None:
    """Patch this process's worker runtime: fixture vectors, a timed lock, start-up phases."""
    import worker.runtime as runtime
    from worker.lexical import LexicalIndex

    real_make = runtime.make_embedder
    real_build = runtime.build_runtime
    real_refresh = LexicalIndex.refresh

    def make_embedder(settings: Any) -> Any:
        t = time.perf_counter()
        embedder = real_make(settings)
        phases["embedder_s"] = phases.get("embedder_s", 0) + time.perf_counter() - t
        return FixtureEmbedder(embedder, table)

    def refresh(self: Any, engine: Any, *args: Any, **kwargs: Any) -> int:
        t = time.perf_counter()
        added = real_refresh(self, engine, *args, **kwargs)
        if added > 1000:
            phases["lexical_refresh_s"] = time.perf_counter() - t
            phases["lexical_tickets"] = added
        return added

    def build_runtime(settings: Any) -> Any:
        t = time.perf_counter()
        rt = real_build(settings)
        RAW_LOCK[:] = [rt.services.lock]
        rt.services.lock = timed_lock(rt.services.lock, sink)
        if getattr(rt.services, "scope_lock", None) is not None:  # per match scope
            rt.services.scope_lock = timed_lock(rt.services.scope_lock, sink)
        phases["build_runtime_s"] = time.perf_counter() - t
        phases["ready_at"] = time.time()
        sink.add({"pid": os.getpid(), "ready": True, **phases})
        return rt

    real_open = getattr(runtime, "open_index", None)

    def open_index(*args: Any, **kwargs: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        index = real_open(*args, **kwargs)  # type: ignore[misc]
        phases["lexical_open_s"] = time.perf_counter() - t
        phases["lexical_open_cpu_s"] = time.process_time() - c
        phases["lexical_mapped"] = getattr(index, "mapped_size", 0)
        return index

    if real_open is not None:  # the snapshot-aware start-up (worker/lexical_snapshot.py)
        runtime.open_index = open_index
    runtime.make_embedder = make_embedder
    runtime.build_runtime = build_runtime
    LexicalIndex.refresh = refresh  # type: ignore[method-assign]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ``section --phases``: the steps a section takes, as ``module:attribute`` of the checkout
# (a checkout without one skips it). Each is timed while the lock is held, its own time
# only (a step called from another is not counted twice).
PHASE_STEPS = (
    "worker.pipeline:_follow",
    "tickets.db:view_marks",
    "tickets.db:stored_tickets",
    "worker.pipeline:_reached",
    "worker.pipeline:_route",
    "worker.pipeline:_write",
    "tickets.purge:hold_shared",
    "tickets.db:write_marks",
    "tickets.db:save_batch",
    "sqlalchemy.orm:Session.commit",
)


def time_phases() -> None:
    """Wrap each of :data:`PHASE_STEPS` with a timer that adds to :data:`PHASES`."""
    import importlib

    stack: list[float] = []  # time spent in nested steps, per open step

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **k: Any) -> Any:
            if not HELD["on"]:
                return fn(*a, **k)
            stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent = time.perf_counter() - t
                nested = stack.pop()
                PHASES[name] = PHASES.get(name, 0.0) + spent - nested
                if stack:
                    stack[-1] += spent

        return wrapper

    for step in PHASE_STEPS:
        module_name, attr = step.split(":")
        owner: Any = importlib.import_module(module_name)
        *path, name = attr.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        fn = getattr(owner, name, None) if owner is not None else None
        if fn is not None:
            setattr(owner, name, timed(name, fn))


def child_section(args: argparse.Namespace) -> None:
    """One checkout, one size: drive prepare_batch / finish_batch and time the section."""
    from sqlalchemy import create_engine, text

    import worker
    from config.settings import load_settings
    from tickets import migrate
    from worker import pipeline

    assert Path(worker.__file__).resolve().is_relative_to(Path(args.code).resolve()), (
        worker.__file__
    )
    engine = create_engine(os.environ["TRIAGE_DATABASE_URL"])
    t = time.perf_counter()
    migrate.upgrade(engine)  # the checkout's own migrations on its copy
    migrate_s = time.perf_counter() - t
    engine.dispose()

    global BATCH
    BATCH = args.batch_size
    total = (args.batches + args.warmup) * BATCH
    pairs = new_tickets(total, offset=args.offset)
    sink, phases = Sink(), {}
    instrument(sink, vector_table(pairs), phases)
    import worker.runtime as runtime

    real_route = getattr(pipeline, "_route", None)
    if real_route is not None:  # a checkout that routes a plan outside the lock

        def route(*a: Any, **k: Any) -> Any:
            HELD["routes"] += HELD["on"]
            return real_route(*a, **k)

        pipeline._route = route
    from tickets import db as tickets_db

    real_stored = tickets_db.stored_tickets

    def stored_tickets(*a: Any, **k: Any) -> Any:
        # The tickets committed since the view was read, read inside the section.
        found = real_stored(*a, **k)
        HELD["caught_up"] += len(found) * HELD["on"]
        return found

    tickets_db.stored_tickets = stored_tickets
    real_marks = tickets_db.view_marks

    def view_marks(*a: Any, **k: Any) -> Any:
        # A checkout whose view check reads those tickets whole itself.
        marks = real_marks(*a, **k)
        HELD["caught_up"] += len(getattr(marks, "rows", ())) * HELD["on"]
        return marks

    tickets_db.view_marks = view_marks
    if os.environ.get("BENCH_PHASES"):
        time_phases()
    rss0 = rss_mib()
    rt = runtime.build_runtime(load_settings())
    services = rt.services
    rt.batcher.stop()
    freeze = getattr(runtime, "freeze_startup_heap", None)
    if freeze is not None:  # a checkout whose worker freezes its start-up heap, as get_runtime
        freeze()
    rss1 = rss_mib()
    rows = []
    routes: dict[str, int] = {}
    others: list[Any] = []
    if args.contended:
        # Another worker's commit between this batch's snapshot (and plan) and its section:
        # ``contended`` tickets of the same clusters, stored with their vectors, which the
        # section must catch up with, as when several workers take turns at the lock.
        # ``--holders K``: K other holders take the lock in turn while this batch waits for
        # it, each committing ``contended`` tickets inside it, as when K + 1 workers queue
        # for one scope.
        from sqlalchemy.orm import Session

        from tickets import db as tdb

        groups = max(1, args.holders)
        others = new_tickets(
            args.contended * groups * (args.warmup + args.batches), args.offset + 5_000
        )
        turn = iter(range(0, len(others), args.contended))

        def next_group() -> tuple[list[Any], list[dict[str, Any]]]:
            start = next(turn)
            part = others[start : start + args.contended]
            rows_ = [
                tdb.ticket_values(
                    t,
                    content_hash=f"other-{start}-{n}",
                    backfill=True,
                    model=services.embedder.model_id,
                    vector=pipeline.encode_vector(np.asarray(v, np.float32)),
                )
                for n, (t, v) in enumerate(part)
            ]
            return part, rows_

        def commit(rows_: list[dict[str, Any]]) -> None:
            with Session(services.engine) as session:
                tdb.save_batch(session, rows_, [])
                session.commit()

        def commit_group() -> list[Any]:
            part, rows_ = next_group()
            commit(rows_)
            return part

        try:  # a checkout whose holders hand their rows to the first waiter
            from worker import handoff
        except ImportError:
            handoff = None

        def publish(part: list[Any]) -> None:
            # ... and publishes their vectors after its commit, as a worker does: later
            # snapshots find them in the store, not among the unindexed.
            keys = [t.key for t, _ in part]
            services.store.upsert(
                keys,
                np.stack([np.asarray(v, np.float32) for _, v in part]),
                [pipeline.vector_meta(t.key, t.key, "history", True, t.queue) for t, _ in part],
            )
            with Session(services.engine) as session:
                tdb.mark_indexed(session, keys, datetime.now(UTC))
                session.commit()

        def commit_others(_keys: Any) -> None:
            publish(commit_group())

        holding: list[threading.Thread] = []
        held_groups: list[Any] = []

        def hold_in_turn(_keys: Any) -> None:
            first = threading.Event()

            def holders() -> None:
                for _ in range(args.holders):
                    with RAW_LOCK[0]() as section:
                        first.set()
                        # A section's work: its catch-up and routing, then (the rows
                        # final, handed to the first waiter where the checkout does) its
                        # write, then its commit.
                        time.sleep(args.hold_ms / 2000)
                        part, rows_ = next_group()
                        if handoff is not None and hasattr(section, "hand"):
                            section.hand(
                                lambda rows_=rows_: handoff.encode(handoff.stored_rows(rows_, []))
                            )
                        time.sleep(args.hold_ms / 2000)
                        commit(rows_)
                        held_groups.append(part)

            thread = threading.Thread(target=holders)
            thread.start()
            holding[:] = [thread]
            first.wait()

        def published_in_turn() -> None:
            # The holders' vectors reach the store once this batch is done: this process
            # does nothing else while its section is held.
            holding[0].join()
            for part in held_groups:
                publish(part)
            held_groups.clear()

        services.hooks.after_snapshot = hold_in_turn if args.holders else commit_others
    for b in range(args.warmup + args.batches):
        FULL["on"] = b >= args.warmup
        items = [pipeline.WorkItem(t) for t, _ in pairs[b * BATCH : (b + 1) * BATCH]]
        before = len(sink.records)
        t0 = time.perf_counter()
        prepared = pipeline.prepare_batch(items, services)
        t1 = time.perf_counter()
        results = pipeline.finish_batch(prepared, services)
        t2 = time.perf_counter()
        if args.holders:
            published_in_turn()
        assert all(r.error is None for r in results), [r.error for r in results if r.error]
        if b < args.warmup:
            continue
        for r in results:
            routes[r.status] = routes.get(r.status, 0) + 1
        lock = sink.records[before:]
        rows.append(
            {
                "prepare": t1 - t0,
                "finish": t2 - t1,
                "section": sum(r["section"] for r in lock),
                "cpu_self": sum(r["cpu_self"] for r in lock),
                "cpu_chroma": sum(r["cpu_chroma"] for r in lock),
                "sections": len(lock),
                "gc": sum(r["gc"] for r in lock),
                "gc_full": sum(r["gc_full"] for r in lock),
                "routed_in_section": sum(r["routed_in_section"] for r in lock),
                "phases": {
                    k: sum(r["phases"].get(k, 0.0) for r in lock)
                    for k in {k for r in lock for k in r["phases"]}
                },
                "held": sum(r["held"] for r in lock),
                "wait": sum(r["wait"] for r in lock),
                "caught_up": sum(r["caught_up"] for r in lock),
            }
        )
    # Leave the fixture as found: the vectors this run added (SQL is a per-run copy).
    services.store._collection.delete(ids=[t.key.as_id() for t, _ in pairs + others])
    rt.close()
    # A checkout that keeps its own section timer (seconds the lock was held): its figures too.
    own = getattr(pipeline, "section_times", None)
    own_times = list(own())[-len(rows) :] if callable(own) else []
    section = [r["section"] for r in rows]
    work = [r["prepare"] + r["finish"] for r in rows]
    share = [s / w for s, w in zip(section, work, strict=True)]
    out = {
        "code": args.name,
        "size": args.size,
        "batches": len(rows),
        "section_p50_ms": ms(pct(section, 50)),
        "section_p99_ms": ms(pct(section, 99)),
        "section_mean_ms": ms(statistics.fmean(section)),
        "section_cpu_self_mean_ms": ms(statistics.fmean(r["cpu_self"] for r in rows)),
        "section_cpu_chroma_mean_ms": ms(statistics.fmean(r["cpu_chroma"] for r in rows)),
        "section_gc_mean_ms": ms(statistics.fmean(r["gc"] for r in rows)),
        "section_gc_full": sum(r["gc_full"] for r in rows),
        "full_gc_count": len(FULL["pauses"]),
        "full_gc_mean_ms": ms(statistics.fmean(FULL["pauses"])) if FULL["pauses"] else 0.0,
        "full_gc_max_ms": ms(max(FULL["pauses"], default=0.0)),
        "gc_freed_per_batch": round(FULL["freed"] / len(rows), 1),
        # batches routed again inside the section (their plan's view no longer held)
        "rerouted_batches": sum(r["routed_in_section"] > 0 for r in rows),
        "prepare_p50_ms": ms(pct([r["prepare"] for r in rows], 50)),
        "finish_p50_ms": ms(pct([r["finish"] for r in rows], 50)),
        "batch_p50_ms": ms(pct(work, 50)),
        "share_p50": round(pct(share, 50), 3),
        "ceiling_tickets_s": round(BATCH / pct(section, 50), 1),
        "ceiling_p99_tickets_s": round(BATCH / pct(section, 99), 1),
        "routes": routes,
        "batch_size": BATCH,
        "contended": args.contended,
        "holders": args.holders,
        # Holding → released (the section above also counts the wait for the lock, which
        # is the other holders' time with --holders); the tickets read inside the section
        # as committed since its plan's view (caught up with there).
        "held_p50_ms": ms(pct([r["held"] for r in rows], 50)),
        "held_p99_ms": ms(pct([r["held"] for r in rows], 99)),
        "wait_p50_ms": ms(pct([r["wait"] for r in rows], 50)),
        "caught_up_mean": round(statistics.fmean(r["caught_up"] for r in rows), 1),
        # ``--phases``: mean wall ms per batch inside the held section, per step.
        "phases_mean_ms": {
            k: ms(statistics.fmean(r["phases"].get(k, 0.0) for r in rows))
            for k in sorted({k for r in rows for k in r["phases"]})
        },
        "ceiling_held_tickets_s": round(BATCH / pct([r["held"] for r in rows], 50), 1),
        # Sections that caught up inside the lock, where the checkout tells (one that takes
        # the holder's hand-off catches up while waiting, worker/handoff.py).
        "caught_up_inside": (
            sum(pipeline.sections_caught_up()[-len(rows) :])
            if hasattr(pipeline, "sections_caught_up")
            else None
        ),
        "own_timer_p50_ms": ms(pct(own_times, 50)) if own_times else None,
        "own_timer_p99_ms": ms(pct(own_times, 99)) if own_times else None,
        "migrate_s": round(migrate_s, 2),
        "build_runtime_s": round(phases.get("build_runtime_s", 0), 2),
        "lexical_refresh_s": round(phases.get("lexical_refresh_s", 0), 2),
        "rss_runtime_mib": round(rss1 - rss0, 1),
        "per_batch_ms": [[ms(r["prepare"]), ms(r["finish"]), ms(r["section"])] for r in rows],
    }
    with engine.connect() as conn:
        out["stored_tickets"] = conn.execute(text("SELECT count(*) FROM triage_tickets")).scalar()
    if PROFILE is not None:
        PROFILE.dump_stats(os.environ["BENCH_PROFILE"])
    print("RESULT " + json.dumps(out), flush=True)


def child_worker(args: argparse.Namespace, celery_args: list[str]) -> None:
    """A real `triage worker` of the checkout, instrumented (see ``instrument``)."""
    import worker

    assert Path(worker.__file__).resolve().is_relative_to(Path(args.code).resolve())
    pairs = new_tickets(args.tickets, offset=args.offset)
    phases: dict[str, float] = {"started_at": args.started_at or time.time()}
    instrument(Sink(Path(args.sink)), vector_table(pairs), phases)
    from cli.main import main as triage

    sys.argv = ["triage", "worker", *celery_args]
    triage()


# --- the orchestrating process ------------------------------------------------------------------


def admin_sql(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG.format(db="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


DB_PREFIX = ["bench"]
# --collection SIZE=NAME: the Chroma collection to serve for a size (default bench-SIZE).
COLLECTIONS: dict[int, str] = {}


def copy_db(size: int, name: str) -> str:
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{DB_PREFIX[0]}_{size_label(size)}"')
    return PG.format(db=name)


def drop_db(name: str) -> None:
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


SERVER_PID = [0]


@contextlib.contextmanager
def chroma_server(path: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    import socket
    import urllib.request

    # A server left on the port (an interrupted run's) would answer the heartbeat below and
    # be measured instead, with another collection state and another process's CPU.
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"port {port} is in use (a chroma run left over?): --port another")
    log = open(f"/tmp/bench16-chroma-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("chroma")), "run", "--path", str(path),
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"chroma run failed: see /tmp/bench16-chroma-{port}.log"
                    ) from None
                time.sleep(0.5)
        SERVER_PID[0] = proc.pid
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def child_env(code: Path, db_url: str, size: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update(
        BENCH_CHROMA_PID=str(SERVER_PID[0]),
        PYTHONPATH=str(code),
        TRIAGE_DATABASE_URL=db_url,
        TRIAGE_CHROMA_URL=f"http://127.0.0.1:{port}",
        TRIAGE_CHROMA_COLLECTION=COLLECTIONS.get(size, f"bench-{size_label(size)}"),
        TRIAGE_REDIS_URL=REDIS,
        TRIAGE_QUEUE=QUEUE,
        TRIAGE_LOG_LEVEL="WARNING",
    )
    return env


def git_describe(code: Path) -> str:
    head = subprocess.run(
        ["git", "-C", str(code), "log", "-1", "--format=%h %s"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return head.stdout.strip()[:90]


def header(args: argparse.Namespace, codes: dict[str, Path]) -> None:
    print(f"command: {' '.join(sys.argv)}")
    print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores; "
        f"python {platform.python_version()}; "
        + ", ".join(
            f"{p} {metadata.version(p)}"
            for p in ("chromadb", "celery", "redis", "SQLAlchemy", "psycopg", "numpy")
        )
        + f"; load average {os.getloadavg()[0]:.1f}"
    )
    for name, code in codes.items():
        print(f"code {name}: {code} ({git_describe(code)})")
    for size, name in COLLECTIONS.items():
        print(f"at {size} stored tickets in SQL the Chroma collection is {name}")
    sys.stdout.flush()


def parse_codes(values: list[str]) -> dict[str, Path]:
    codes = {}
    for value in values:
        name, _, path = value.partition("=")
        codes[name] = Path(path).resolve()
    return codes


def run_section(args: argparse.Namespace) -> None:
    codes = parse_codes(args.code)
    header(args, codes)
    results = []
    with chroma_server(args.fixtures / "chroma", args.port):
        for size in [int(s) for s in args.sizes.split(",")]:
            for rep in range(args.repeat):
                for k, (name, code) in enumerate(codes.items()):
                    db = f"bench_cs_{name}_{size_label(size)}"
                    url = copy_db(size, db)
                    cmd = [
                        sys.executable, str(BENCH / "critical_section.py"), "child-section",
                        "--code", str(code), "--name", name, "--size", str(size),
                        "--batches", str(args.batches), "--warmup", str(args.warmup),
                        "--offset", str((rep * len(codes) + k) * 10_000),
                        "--contended", str(args.contended),
                        "--holders", str(args.holders), "--hold-ms", str(args.hold_ms),
                        "--batch-size", str(args.batch_size),
                    ]  # fmt: skip
                    env = child_env(code, url, size, args.port)
                    if args.phases:
                        env["BENCH_PHASES"] = "1"
                    if args.profile is not None:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        env["BENCH_PROFILE"] = str(
                            args.profile / f"{name}-{size_label(size)}-{rep}.pstats"
                        )
                    proc = subprocess.run(
                        cmd, env=env,
                        capture_output=True, text=True, check=False,
                    )  # fmt: skip
                    drop_db(db)
                    line = next(
                        (x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None
                    )
                    if line is None:
                        print(f"{name} at {size}: failed\n{proc.stderr[-4000:]}", flush=True)
                        continue
                    r = json.loads(line[7:])
                    r["repeat"] = rep
                    results.append(r)
                    print(
                        f"{name:>7} {size:>8} stored: section p50 {r['section_p50_ms']} ms "
                        f"p99 {r['section_p99_ms']} ms; batch p50 {r['batch_p50_ms']} ms "
                        f"(prepare {r['prepare_p50_ms']}, finish {r['finish_p50_ms']}); share "
                        f"{r['share_p50']:.0%}; ceiling {r.get('batch_size', BATCH)}/p50 = "
                        f"{r['ceiling_tickets_s']} "
                        f"tickets/s; CPU in the section (mean) {r['section_cpu_self_mean_ms']} ms "
                        f"here + {r['section_cpu_chroma_mean_ms']} ms Chroma server; "
                        f"routes {r['routes']}; runtime built in "
                        f"{r['build_runtime_s']} s (lexical {r['lexical_refresh_s']} s); "
                        f"{r.get('contended', 0)} tickets committed by another worker meanwhile; "
                        f"routed again in the section: {r.get('rerouted_batches', 0)} of "
                        f"{r['batches']} batches; GC in the section (mean) "
                        f"{r.get('section_gc_mean_ms', 0)} ms, "
                        f"{r.get('section_gc_full', 0)} full collections; over the run "
                        f"{r.get('full_gc_count', 0)} full collections, mean "
                        f"{r.get('full_gc_mean_ms', 0)} ms, max {r.get('full_gc_max_ms', 0)} "
                        f"ms; objects freed by the collector per batch "
                        f"{r.get('gc_freed_per_batch', 0)}"
                        + (
                            "; wall per batch in the section's steps (mean): "
                            + ", ".join(f"{k} {v} ms" for k, v in r["phases_mean_ms"].items())
                            + f"; waiting for the lock p50 {r['wait_p50_ms']} ms"
                            if r.get("phases_mean_ms")
                            else ""
                        )
                        + (
                            f"; {r['holders']} other holders in turn while it waited: "
                            f"held p50 {r['held_p50_ms']} ms p99 {r['held_p99_ms']} ms, "
                            f"wait p50 {r['wait_p50_ms']} ms, tickets caught up in the "
                            f"section (mean) {r['caught_up_mean']}, ceiling 32/held p50 = "
                            f"{r['ceiling_held_tickets_s']} tickets/s; sections that caught up "
                            f"inside the lock {r.get('caught_up_inside')} of {r['batches']}"
                            if r.get("holders")
                            else ""
                        ),
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1) + "\n")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process so far, from /proc."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pg_backends(db: str) -> list[int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG.format(db="postgres"))
    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :d"), {"d": db}
        ).scalars()
        out = list(pids)
    engine.dispose()
    return out


def decided(url: str) -> tuple[int, list[float]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT extract(epoch FROM decided_at) FROM triage_decisions WHERE source = :s"),
            {"s": NEW_SOURCE},
        ).scalars()
        times = sorted(float(x) for x in rows)
    engine.dispose()
    return len(times), times


def run_workers(args: argparse.Namespace) -> None:
    import redis

    codes = parse_codes(args.code)
    header(args, codes)
    results = []
    size = args.size
    r = redis.Redis.from_url(REDIS)
    with chroma_server(args.fixtures / "chroma", args.port) as chroma:
        for rep in range(args.repeat):
            for n in [int(x) for x in args.processes.split(",")]:
                for k, (name, code) in enumerate(codes.items()):
                    offset = 100_000 + (rep * 10 + k) * 20_000
                    out = one_worker_run(args, name, code, size, n, offset, chroma.pid, r)
                    out["repeat"] = rep
                    results.append(out)
                    print(
                        f"{name:>7} {n} process(es): {out['decided']}/{args.tickets} in "
                        f"{out['wall_s']} s = {out['tickets_s']} tickets/s (steady "
                        f"{out['steady_tickets_s']}); CPU/ticket workers "
                        f"{out['cpu_ms_per_ticket_workers']} ms, chroma "
                        f"{out['cpu_ms_per_ticket_chroma']} ms, postgres "
                        f"{out['cpu_ms_per_ticket_postgres']} ms; lock wait p50 "
                        f"{out['lock_wait_p50_ms']} ms p99 {out['lock_wait_p99_ms']} ms, "
                        f"section p50 {out['section_p50_ms']} ms over {out['batches']} batches "
                        f"(mean {out['mean_batch']:.1f} tickets); lock busy "
                        f"{out['lock_busy_share']:.0%} of the run",
                        flush=True,
                    )
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1) + "\n")


def one_worker_run(
    args: argparse.Namespace,
    name: str,
    code: Path,
    size: int,
    n: int,
    offset: int,
    chroma_pid: int,
    r: Any,
) -> dict[str, Any]:
    db = f"bench_w_{name}_{n}"
    url = copy_db(size, db)
    sink = Path(f"/tmp/bench16-sink-{name}-{n}.jsonl")
    sink.unlink(missing_ok=True)
    r.delete(QUEUE, f"{QUEUE}.search")
    env = child_env(code, url, size, args.port)
    # Each process migrates nothing (the worker refuses an old schema): do it once here.
    migrate_copy(code, env)
    procs = []
    logs = []
    for p in range(n):
        log = open(f"/tmp/bench16-worker-{name}-{n}-{p}.log", "wb")  # noqa: SIM115
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(BENCH / "critical_section.py"),
                    "child-worker",
                    "--code",
                    str(code),
                    "--sink",
                    str(sink),
                    "--tickets",
                    str(args.tickets),
                    "--offset",
                    str(offset),
                    "--",
                    "--hostname",
                    f"bench16-{name}-{p}@%h",
                    "--without-heartbeat",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        deadline = time.monotonic() + 600
        while _ready(sink) < n:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise SystemExit(
                    f"a worker did not start: see /tmp/bench16-worker-{name}-{n}-*.log"
                )
            time.sleep(0.5)
        time.sleep(5)  # Celery's consumer starts after the runtime is built
        ready = _read(sink)
        pids = [p.pid for p in procs]
        backends = pg_backends(db)
        cpu0 = {pid: proc_cpu_s(pid) for pid in [*pids, chroma_pid, *backends]}
        t0 = time.time()
        publish_new(code, env, args.tickets, offset)
        t_pub = time.time()
        count = 0
        times: list[float] = []
        while time.time() - t0 < args.timeout:
            count, times = decided(url)
            if count >= args.tickets:
                break
            time.sleep(0.5)
        t1 = times[-1] if times else time.time()
        backends = sorted(set(backends) | set(pg_backends(db)))
        cpu1 = {pid: proc_cpu_s(pid) for pid in [*pids, chroma_pid, *backends]}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    records = [x for x in _read(sink) if "section" in x and x["at"] >= t0]

    def cpu(group: list[int]) -> float:
        return sum(cpu1.get(p, 0) - cpu0.get(p, 0) for p in group)

    # Leave the fixture as found: the vectors this run added (the database was a copy).
    cleanup_vectors(code, env, args.tickets, offset)
    drop_db(db)
    done = max(count, 1)
    wall = t1 - t0
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    steady = (hi - lo) / (times[hi - 1] - times[lo]) if hi - 1 > lo and times else 0.0
    waits = [x["wait"] for x in records]
    sections = [x["section"] for x in records]
    return {
        "code": name,
        "processes": n,
        "tickets": args.tickets,
        "decided": count,
        "publish_s": round(t_pub - t0, 2),
        "wall_s": round(wall, 2),
        "tickets_s": round(count / wall, 1),
        "steady_tickets_s": round(steady, 1),
        "cpu_ms_per_ticket_workers": round(1000 * cpu(pids) / done, 2),
        "cpu_ms_per_ticket_chroma": round(1000 * cpu([chroma_pid]) / done, 2),
        "cpu_ms_per_ticket_postgres": round(1000 * cpu(backends) / done, 2),
        "batches": len(records),
        "mean_batch": count / max(len(records), 1),
        "lock_wait_p50_ms": ms(pct(waits, 50)),
        "lock_wait_p99_ms": ms(pct(waits, 99)),
        "lock_wait_mean_ms": ms(statistics.fmean(waits)) if waits else None,
        "section_p50_ms": ms(pct(sections, 50)),
        "section_p99_ms": ms(pct(sections, 99)),
        "lock_busy_share": round(sum(x["held"] for x in records) / wall, 3) if wall else 0,
        "startup": [
            {k: round(v, 2) for k, v in x.items() if k.endswith("_s") or k == "lexical_tickets"}
            for x in ready
            if x.get("ready")
        ],
    }


def migrate_copy(code: Path, env: dict[str, str]) -> None:
    """The database copy brought to the checkout's schema, by the checkout's migrations."""
    subprocess.run(
        [sys.executable, "-c", "import os; from sqlalchemy import create_engine; "
         "from tickets import migrate; "
         "migrate.upgrade(create_engine(os.environ['TRIAGE_DATABASE_URL']))"],
        env=env, cwd=code, check=True,
    )  # fmt: skip


def _read(sink: Path) -> list[dict[str, Any]]:
    if not sink.exists():
        return []
    return [json.loads(x) for x in sink.read_text().splitlines() if x.strip()]


def _ready(sink: Path) -> int:
    return sum(1 for x in _read(sink) if x.get("ready"))


def publish_new(code: Path, env: dict[str, str], n: int, offset: int) -> None:
    """Publish the new tickets as `triage ingest` does (BATCH per message), in a process of
    the checkout under test."""
    subprocess.run(
        [sys.executable, str(BENCH / "critical_section.py"), "child-publish", "--code",
         str(code), "--tickets", str(n), "--offset", str(offset)],
        env=env, check=True,
    )  # fmt: skip


def child_publish(args: argparse.Namespace) -> None:
    from config.celery_app import create_app
    from config.settings import load_settings
    from tickets.queue import publish

    settings = load_settings()
    tickets = [t for t, _ in new_tickets(args.tickets, offset=args.offset)]
    app = create_app(settings)
    for _ in publish(app, tickets, queue=settings.queue, per_message=BATCH):
        pass


def cleanup_vectors(code: Path, env: dict[str, str], n: int, offset: int) -> None:
    subprocess.run(
        [sys.executable, str(BENCH / "critical_section.py"), "child-cleanup", "--code",
         str(code), "--tickets", str(n), "--offset", str(offset)],
        env=env, check=True,
    )  # fmt: skip


def child_cleanup(args: argparse.Namespace) -> None:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from config.settings import load_settings

    settings = load_settings()
    url = settings.chroma_url or ""
    host, port = url.split("//")[1].split(":")
    client = chromadb.HttpClient(
        host=host, port=int(port), settings=ChromaSettings(anonymized_telemetry=False)
    )
    col = client.get_collection(settings.chroma_collection)
    ids = [t.key.as_id() for t, _ in new_tickets(args.tickets, offset=args.offset)]
    for s in range(0, len(ids), 5000):
        col.delete(ids=ids[s : s + 5000])


# --- bounds ------------------------------------------------------------------------------------


def run_bounds(args: argparse.Namespace) -> None:
    codes = {"main": Path(args.bounds_code).resolve()}
    header(args, codes)
    code = codes["main"]
    db = f"bench_bounds_{size_label(args.size)}"
    url = copy_db(args.size, db)
    env = child_env(code, url, args.size, args.port)
    migrate_copy(code, env)
    try:
        with chroma_server(args.fixtures / "chroma", args.port):
            proc = subprocess.run(
                [sys.executable, str(BENCH / "critical_section.py"), "child-bounds", "--code",
                 str(code), "--seconds", str(args.seconds)],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
    finally:
        drop_db(db)
    sys.stdout.write(proc.stdout)
    if proc.returncode:
        sys.stdout.write(proc.stderr[-4000:])
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if args.json and line:
        args.json.write_text(
            json.dumps({"argv": sys.argv, "results": json.loads(line[7:])}, indent=1) + "\n"
        )


def _loop(seconds: float, fn: Callable[[int], None]) -> list[float]:
    times = []
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
        i += 1
    return times


def child_bounds(args: argparse.Namespace) -> None:
    from kombu import Connection

    from config.celery_app import create_app
    from config.settings import load_settings
    from tickets import db
    from tickets.queue import publish
    from worker.pipeline import _decision_values, vector_meta, with_session
    from worker.routing import Outcome, Thresholds
    from worker.store import open_store
    from worker.text import content_hash

    settings = load_settings()
    out: dict[str, Any] = {}
    pairs = new_tickets(40_000, offset=300_000)
    model = "bench"

    # Chroma server: upserts of new vectors over HTTP into the fixture collection.
    from worker.embedding import make_embedder

    store = open_store(settings, make_embedder(settings))
    used: list[str] = []

    def upsert(lo: int, hi: int) -> None:
        keys = [t.key for t, _ in pairs[lo:hi]]
        used.extend(k.as_id() for k in keys)
        store.upsert(
            keys,
            np.stack([v for _, v in pairs[lo:hi]]),
            [vector_meta(k, k, "new") for k in keys],
        )

    cursor = [0]

    def upsert_n(n: int) -> Callable[[int], None]:
        def step(_: int) -> None:
            upsert(cursor[0], cursor[0] + n)
            cursor[0] += n

        return step

    t32 = _loop(args.seconds, upsert_n(32))
    t1000 = _loop(args.seconds, upsert_n(1000))
    out["chroma_upsert32_p50_ms"] = ms(pct(t32, 50))
    out["chroma_upsert32_p99_ms"] = ms(pct(t32, 99))
    out["chroma_upsert32_vectors_s"] = round(32 * len(t32) / sum(t32), 1)
    out["chroma_upsert1000_vectors_s"] = round(1000 * len(t1000) / sum(t1000), 1)
    for s in range(0, len(used), 5000):
        store._collection.delete(ids=used[s : s + 5000])
    print(f"chroma: {json.dumps(out)}", flush=True)

    # PostgreSQL: the section's write, 32 tickets + 32 decisions per transaction.
    from sqlalchemy import create_engine

    engine = create_engine(settings.database_url)
    th = Thresholds(0.85, 0.65)
    now = datetime.now(UTC)
    rows = []
    for t, _ in pairs:
        outcome = Outcome(t.key, "manual", None, (), t.key, None, "hybrid")
        rows.append(
            (
                db.ticket_values(t, content_hash=content_hash(t.body), backfill=False, model=model),
                _decision_values(t, outcome, model, th, now),
            )
        )
    pos = [0]

    def save(_: int) -> None:
        chunk = rows[pos[0] : pos[0] + 32]
        pos[0] += 32
        with_session(
            lambda s: db.save_batch(s, [a for a, _ in chunk], [b for _, b in chunk]),
            engine,
            commit=True,
        )

    tsql = _loop(min(args.seconds, 30), save)
    out["pg_save32_p50_ms"] = ms(pct(tsql, 50))
    out["pg_save32_p99_ms"] = ms(pct(tsql, 99))
    out["pg_tickets_s"] = round(32 * len(tsql) / sum(tsql), 1)
    print(f"postgres: {json.dumps({k: v for k, v in out.items() if k.startswith('pg')})}")

    # Redis: publish (the product's publish, BATCH tickets a message) and consume (kombu).
    app = create_app(settings)
    queue = f"{QUEUE}.bound"
    tickets = [t for t, _ in pairs[:20_000]]
    with Connection(settings.redis_url) as conn:
        conn.default_channel.client.delete(queue)
    t = time.perf_counter()
    for _ in publish(app, tickets, queue=queue, per_message=BATCH):
        pass
    pub = time.perf_counter() - t
    got = 0
    with Connection(settings.redis_url) as conn:
        sq = conn.SimpleQueue(queue)
        t = time.perf_counter()
        while True:
            try:
                msg = sq.get(block=True, timeout=1)
            except sq.Empty:
                break
            msg.ack()
            got += 1
        con = time.perf_counter() - t - 1  # the last get waited out its 1 s timeout
        sq.close()
        conn.default_channel.client.delete(queue)
    out["redis_publish_tickets_s"] = round(len(tickets) / pub, 1)
    out["redis_consume_messages_s"] = round(got / con, 1)
    out["redis_consume_tickets_s"] = round(got * BATCH / con, 1)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("section", "workers", "bounds"):
        s = sub.add_parser(cmd)
        s.add_argument("--code", action="append", default=[], help="NAME=DIR, repeatable")
        s.add_argument("--fixtures", type=Path, default=FIXTURES)
        s.add_argument("--port", type=int, default=8716)
        s.add_argument("--repeat", type=int, default=1)
        s.add_argument("--json", type=Path)
        s.add_argument("--db-prefix", default="bench", help="fixture databases PREFIX_10k ...")
        s.add_argument(
            "--collection",
            action="append",
            default=[],
            help="SIZE=NAME: serve collection NAME for that size (default bench-10k ...)",
        )
    sub.choices["section"].add_argument("--sizes", default="10000,100000,1000000")
    sub.choices["section"].add_argument("--batches", type=int, default=40)
    sub.choices["section"].add_argument("--warmup", type=int, default=3)
    sub.choices["section"].add_argument(
        "--contended",
        type=int,
        default=0,
        help="tickets another worker commits between each batch's snapshot and its section",
    )
    sub.choices["section"].add_argument(
        "--holders",
        type=int,
        default=0,
        help="with --contended N: that many other holders take the lock in turn while each "
        "batch waits for it, each committing N tickets inside",
    )
    sub.choices["section"].add_argument(
        "--hold-ms",
        type=float,
        default=10.0,
        help="with --holders: how long each holder works inside the lock before its commit",
    )
    sub.choices["section"].add_argument(
        "--batch-size",
        type=int,
        default=BATCH,
        help="tickets per batch (TRIAGE_BATCH_SIZE): the section's fixed costs are per batch",
    )
    sub.choices["section"].add_argument(
        "--phases",
        action="store_true",
        help="time the section's steps (wall ms per batch while the lock is held)",
    )
    sub.choices["section"].add_argument(
        "--profile",
        type=Path,
        help="DIR: write each child's cProfile of the section bodies to DIR/NAME-SIZE-REPEAT.pstats",
    )
    sub.choices["workers"].add_argument("--size", type=int, default=100_000)
    sub.choices["workers"].add_argument("--processes", default="1,2,4")
    sub.choices["workers"].add_argument("--tickets", type=int, default=2048)
    sub.choices["workers"].add_argument("--timeout", type=float, default=600)
    sub.choices["bounds"].add_argument("--size", type=int, default=100_000)
    sub.choices["bounds"].add_argument("--seconds", type=float, default=20)
    sub.choices["bounds"].add_argument("--bounds-code", default=str(BENCH.parent))

    c = sub.add_parser("child-section")
    c.add_argument("--code", required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--size", type=int, required=True)
    c.add_argument("--batches", type=int, required=True)
    c.add_argument("--warmup", type=int, required=True)
    c.add_argument("--offset", type=int, default=0)
    c.add_argument("--contended", type=int, default=0)
    c.add_argument("--holders", type=int, default=0)
    c.add_argument("--hold-ms", type=float, default=10.0)
    c.add_argument("--batch-size", type=int, default=BATCH)
    for name in ("child-worker", "child-publish", "child-cleanup"):
        w = sub.add_parser(name)
        w.add_argument("--code", required=True)
        w.add_argument("--tickets", type=int, required=True)
        w.add_argument("--offset", type=int, default=0)
        w.add_argument("--sink")
        w.add_argument("--started-at", type=float)
    b = sub.add_parser("child-bounds")
    b.add_argument("--code", required=True)
    b.add_argument("--seconds", type=float, default=20)

    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    args = p.parse_args(argv)
    DB_PREFIX[0] = getattr(args, "db_prefix", "bench")
    for value in getattr(args, "collection", []):
        size, _, name = value.partition("=")
        COLLECTIONS[int(size)] = name
    {
        "section": run_section,
        "workers": run_workers,
        "bounds": run_bounds,
        "child-section": child_section,
        "child-publish": child_publish,
        "child-cleanup": child_cleanup,
        "child-bounds": child_bounds,
    }.get(args.cmd, lambda a: child_worker(a, extra))(args)


if __name__ == "__main__":
    main()
