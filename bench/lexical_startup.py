"""A new worker's start-up at scale: the BM25 index rebuilt from SQL, a snapshot prototype, and
a worker joining the cluster until its first decision.

    nice -n 10 python bench/lexical_startup.py refresh --sizes 100000,1000000 --delta 10000
    nice -n 10 python bench/lexical_startup.py join --size 1000000 --snapshot without,with

``refresh``: in a fresh process per size (the checkout's code first on ``sys.path``),
``LexicalIndex().refresh(engine)`` against a copy of the fixture database ``bench_{size}``
(bench/fixture.py), all but the newest ``--delta`` tickets: wall and CPU time, RSS before /
after and peak (VmHWM). Then the product's snapshot of it (worker/lexical_snapshot.py
``write_snapshot``, as `triage lexical snapshot` writes it): time and size. A second fresh
process does what a starting worker does (``load_snapshot``, the deletion check, ``refresh``
from the watermark: the ``--delta`` tickets), timed by part, with RSS after each part; checks
that its BM25 scores equal the fully rebuilt index's exactly on 22 queries (two Chinese); and
times the writer's next run (``update_snapshot``: the snapshot plus the tickets since,
rewritten) on a copy.

``join``: a real `triage worker` of the checkout (Celery, TRIAGE_CHROMA_URL set) is started
against a copy of the fixture database with one new ticket already waiting in its queue; the
figure is the time from starting the process to that ticket's decision row, with the
worker's own start-up phases (model, runtime, lexical refresh) from bench/critical_section.py's
instrumentation. The Chroma server serves the largest collection built (``--collection``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
SNAPSHOTS = Path("/work/fixtures/lexical")


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


QUERIES = 20


def child_build(args: argparse.Namespace) -> None:
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import Session

    from tickets.db import TicketRow
    from worker.lexical import LexicalIndex
    from worker.lexical_snapshot import snapshot_path, write_snapshot

    engine = create_engine(args.database)
    with Session(engine) as session:
        ids = (
            session.execute(
                select(TicketRow.id).order_by(TicketRow.id.desc()).limit(args.delta + 1)
            )
            .scalars()
            .all()
        )
        stored = int(session.scalar(select(func.count()).select_from(TicketRow)) or 0)
    # The snapshot covers all but the newest ``delta`` tickets: those a starting worker reads
    # from SQL, as when the snapshot was written a while before it starts.
    upto = int(ids[-1]) if len(ids) > args.delta else 0
    rss0 = status_mib("VmRSS")
    w0, c0 = time.perf_counter(), time.process_time()
    index = LexicalIndex()
    added = index.refresh(engine, upto) if args.delta else index.refresh(engine)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rss1, hwm = status_mib("VmRSS"), status_mib("VmHWM")
    out: dict[str, Any] = {
        "tickets": stored,
        "snapshot_tickets": added,
        "refresh_s": round(wall, 2),
        "refresh_cpu_s": round(cpu, 2),
        "rss_before_mib": round(rss0, 1),
        "rss_after_mib": round(rss1, 1),
        "rss_index_mib": round(rss1 - rss0, 1),
        "peak_rss_mib": round(hwm, 1),
        "terms": len(index.terms()),
        "postings": sum(len(p[0]) for p in index._postings.values()),
    }
    # The product's snapshot (worker/lexical_snapshot.py), as `triage lexical snapshot` writes it.
    path = Path(args.snapshot)
    w, c = time.perf_counter(), time.process_time()
    size = write_snapshot(index, snapshot_path(path, None))
    out["snapshot_write_s"] = round(time.perf_counter() - w, 2)
    out["snapshot_write_cpu_s"] = round(time.process_time() - c, 2)
    out["snapshot_mib"] = round(size / 2**20, 1)
    index.refresh(engine)  # the rest: the rebuilt index a worker would have
    queries = _queries(index)
    np.save(path / "expected_scores.npy", np.stack([index.scores(q) for q in queries]))
    (path / "queries.json").write_text(json.dumps(queries))
    print("RESULT " + json.dumps(out), flush=True)


def _queries(index: Any) -> list[str]:
    """Ticket texts from the fixture's own generator (realistic lexical queries), and Chinese."""
    from fixture import Generator

    chunk = Generator().chunk(499)
    texts = [f"{chunk['subjects'][k]} {chunk['bodies'][k]}" for k in range(QUERIES)]
    return [*texts, "用户反映订单未发货，请尽快处理退款", "ＡＰＰ１ 登录 crash 错误"]


def child_load(args: argparse.Namespace) -> None:
    import shutil

    from sqlalchemy import create_engine

    from worker.lexical_snapshot import (
        _check_no_deletions,
        load_snapshot,
        snapshot_path,
        update_snapshot,
    )

    path = Path(args.snapshot)
    engine = create_engine(args.database)
    rss0, anon0 = status_mib("VmRSS"), status_mib("RssAnon")
    # What open_index() does at a worker's start, timed by part.
    w0, c0 = time.perf_counter(), time.process_time()
    index = load_snapshot(snapshot_path(path, None))
    _check_no_deletions(index, engine)
    load_s, load_cpu_s = time.perf_counter() - w0, time.process_time() - c0
    rss_loaded = status_mib("VmRSS")
    t, c = time.perf_counter(), time.process_time()
    caught_up = index.refresh(engine)
    catch_up_s, catch_up_cpu_s = time.perf_counter() - t, time.process_time() - c
    rss_caught_up, anon_caught_up = status_mib("VmRSS"), status_mib("RssAnon")
    file_caught_up = status_mib("RssFile")
    expected = np.load(path / "expected_scores.npy")
    queries = json.loads((path / "queries.json").read_text())
    t = time.perf_counter()
    first = index.scores(queries[0])
    first_query_s = time.perf_counter() - t
    got = np.stack([first, *(index.scores(q) for q in queries[1:])])
    same = got.shape == expected.shape and bool(np.array_equal(got, expected))
    rss_queried = status_mib("VmRSS")
    # Private memory (anonymous) and mapped file pages (the snapshot: shared by every process
    # of the host mapping it, and the page cache's to drop).
    anon, file = status_mib("RssAnon"), status_mib("RssFile")
    peak = status_mib("VmHWM")
    # The writer's next run on a copy: the snapshot plus the tickets since, rewritten.
    again = path / "update"
    again.mkdir(exist_ok=True)
    shutil.copy(snapshot_path(path, None), snapshot_path(again, None))
    w, c = time.perf_counter(), time.process_time()
    updated = update_snapshot(engine, again)
    update_s, update_cpu_s = time.perf_counter() - w, time.process_time() - c
    print(
        "RESULT "
        + json.dumps(
            {
                "load_s": round(load_s, 2),
                "load_cpu_s": round(load_cpu_s, 2),
                "catch_up_rows": caught_up,
                "catch_up_s": round(catch_up_s, 3),
                "catch_up_cpu_s": round(catch_up_cpu_s, 3),
                "open_s": round(load_s + catch_up_s, 2),
                "open_cpu_s": round(load_cpu_s + catch_up_cpu_s, 2),
                "first_query_s": round(first_query_s, 3),
                "rss_loaded_mib": round(rss_loaded - rss0, 1),
                "rss_caught_up_mib": round(rss_caught_up - rss0, 1),
                "rss_anon_caught_up_mib": round(anon_caught_up - anon0, 1),
                "rss_file_caught_up_mib": round(file_caught_up, 1),
                "rss_after_queries_mib": round(rss_queried - rss0, 1),
                "peak_rss_mib": round(peak, 1),
                "rss_anon_mib": round(anon, 1),
                "rss_file_mib": round(file, 1),
                "rss_anon_before_mib": round(anon0, 1),
                "scores_equal_rebuilt": same,
                "queries": len(queries),
                "update_s": round(update_s, 2),
                "update_cpu_s": round(update_cpu_s, 2),
                "update_added": updated["added"],
            }
        ),
        flush=True,
    )


def _child(mode: str, code: Path, database: str, snapshot: Path, delta: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "lexical_startup.py"), mode, "--database", database,
         "--snapshot", str(snapshot), "--delta", str(delta)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(line[7:]))


def migrate(code: Path, database: str) -> None:
    subprocess.run(
        [sys.executable, "-c", "import sys; from sqlalchemy import create_engine; "
         "from tickets import migrate; migrate.upgrade(create_engine(sys.argv[1]))", database],
        cwd=code, check=True,
    )  # fmt: skip


def run_refresh(args: argparse.Namespace) -> None:
    import critical_section as cs

    cs.header(args, {"code": args.code})
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        # A copy brought to the checkout's schema (its migrations may add columns it reads).
        cs.DB_PREFIX[0] = args.db_prefix
        db = f"bench_lex_{cs.size_label(size)}"
        database = cs.copy_db(size, db)
        migrate(args.code, database)
        snapshot = args.snapshots / cs.size_label(size)
        try:
            built = _child("child-build", args.code, database, snapshot, args.delta)
            loaded = _child("child-load", args.code, database, snapshot, args.delta)
        finally:
            cs.drop_db(db)
        r = {"size": size, "rebuild": built, "snapshot": loaded}
        results.append(r)
        print(
            f"{size:>8} tickets: refresh from SQL of {built['snapshot_tickets']} tickets "
            f"{built['refresh_s']} s (CPU {built['refresh_cpu_s']} s), index RSS "
            f"+{built['rss_index_mib']} MiB, peak {built['peak_rss_mib']} MiB, {built['terms']} "
            f"terms, {built['postings']} postings; snapshot {built['snapshot_mib']} MiB written "
            f"in {built['snapshot_write_s']} s (CPU {built['snapshot_write_cpu_s']} s); mapped in "
            f"{loaded['load_s']} s (CPU {loaded['load_cpu_s']} s, RSS "
            f"+{loaded['rss_loaded_mib']} MiB) + catch-up of {loaded['catch_up_rows']} rows in "
            f"{loaded['catch_up_s']} s (CPU {loaded['catch_up_cpu_s']} s, RSS "
            f"+{loaded['rss_caught_up_mib']} MiB: private +{loaded['rss_anon_caught_up_mib']} MiB, "
            f"mapped file {loaded['rss_file_caught_up_mib']} MiB); first query {loaded['first_query_s']} s, "
            f"RSS after {loaded['queries']} queries +{loaded['rss_after_queries_mib']} MiB "
            f"(private {loaded['rss_anon_mib']} MiB of which {loaded['rss_anon_before_mib']} "
            f"before loading, mapped file {loaded['rss_file_mib']} MiB), peak "
            f"{loaded['peak_rss_mib']} MiB; scores equal to the rebuilt index's: "
            f"{loaded['scores_equal_rebuilt']}; writer's update (+{loaded['update_added']}) "
            f"{loaded['update_s']} s (CPU {loaded['update_cpu_s']} s)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1) + "\n")


def run_join(args: argparse.Namespace) -> None:
    import critical_section as cs
    import redis

    cs.header(args, {"code": args.code})
    size = args.size
    cs.DB_PREFIX[0] = args.db_prefix
    db = f"bench_join_{cs.size_label(size)}"
    t = time.perf_counter()
    url = cs.copy_db(size, db)
    print(f"database copied in {time.perf_counter() - t:.1f} s", flush=True)
    results = []
    try:
        with cs.chroma_server(args.fixtures / "chroma", args.port) as chroma:
            env = cs.child_env(args.code, url, size, args.port)
            env["TRIAGE_CHROMA_COLLECTION"] = args.collection
            migrate(args.code, url)
            # A query of the collection first: a joining worker meets a running server.
            cs.cleanup_vectors(args.code, env, 1, 900_000 + 0)
            for mode in args.snapshot.split(","):
                run_env = dict(env)
                if mode == "with":
                    run_env["TRIAGE_LEXICAL_SNAPSHOT_DIR"] = str(args.snapshot_dir)
                    written = _write_snapshot(args, run_env)
                for rep in range(args.repeat):
                    out = _join_once(args, cs, run_env, url, rep, chroma.pid, redis)
                    out["snapshot"] = mode
                    if mode == "with":
                        out["snapshot_writer"] = written
                    results.append(out)
    finally:
        cs.drop_db(db)
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1) + "\n")


def _write_snapshot(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """`triage lexical snapshot` of the checkout, unless the directory holds one already
    (one written for the same fixture, e.g. by ``refresh``: the worker catches up the rest)."""
    from worker.lexical_snapshot import snapshot_path

    if snapshot_path(args.snapshot_dir, None).exists() and not args.write_snapshot:
        return {"reused": str(snapshot_path(args.snapshot_dir, None))}
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "lexical", "snapshot"],
        env=env, cwd=args.code, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"triage lexical snapshot failed:\n{proc.stderr[-3000:]}")
    out = {"wall_s": round(time.perf_counter() - t, 2), "output": proc.stdout.strip()}
    print(f"triage lexical snapshot: {out['output']} ({out['wall_s']} s)", flush=True)
    return out


def _join_once(
    args: argparse.Namespace,
    cs: Any,
    env: dict[str, str],
    url: str,
    rep: int,
    chroma: int,
    redis: Any,
) -> dict[str, Any]:
    offset = 900_000 + rep
    r = redis.Redis.from_url(cs.REDIS)
    r.delete(cs.QUEUE)
    sink = Path(f"/tmp/bench16-join-{rep}.jsonl")
    sink.unlink(missing_ok=True)
    t0 = time.time()
    cs.publish_new(args.code, env, 1, offset)
    published = time.time()
    log = open(f"/tmp/bench16-join-{rep}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "critical_section.py"), "child-worker", "--code",
         str(args.code), "--sink", str(sink), "--tickets", "1", "--offset", str(offset),
         "--started-at", str(published), "--", "--hostname", f"bench16-join-{rep}@%h",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        count = 0
        while time.time() - published < args.timeout:
            count, times = cs.decided(url)
            if count or proc.poll() is not None:
                break
            time.sleep(0.2)
        seen = time.time()
    finally:
        proc.send_signal(2)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    phases = next((x for x in cs._read(sink) if x.get("ready")), {})
    cs.cleanup_vectors(args.code, env, 1, offset)
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        for table in ("triage_decisions", "triage_tickets"):
            conn.execute(text(f"DELETE FROM {table} WHERE source = :s"), {"s": cs.NEW_SOURCE})
    engine.dispose()
    out = {
        "decided": count,
        "publish_s": round(published - t0, 2),
        "first_decision_s": round(times[0] - published, 2) if count else None,
        "seen_s": round(seen - published, 2),
        "runtime_ready_s": round(phases.get("ready_at", 0) - published, 2) if phases else None,
        "phases": {k: round(v, 2) for k, v in phases.items() if k.endswith("_s")},
        "lexical_tickets": phases.get("lexical_tickets"),
        "lexical_mapped": phases.get("lexical_mapped"),
    }
    how = "snapshot" if env.get("TRIAGE_LEXICAL_SNAPSHOT_DIR") else "no snapshot"
    print(
        f"join {rep} ({how}): "
        f"first decision {out['first_decision_s']} s after the process started "
        f"(runtime ready at {out['runtime_ready_s']} s: {out['phases']}; "
        f"{out['lexical_mapped'] or 0} tickets mapped from the snapshot, "
        f"{out['lexical_tickets'] or 0} read from SQL)",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("refresh")
    r.add_argument("--sizes", default="100000,1000000")
    r.add_argument("--snapshots", type=Path, default=SNAPSHOTS)
    r.add_argument(
        "--delta", type=int, default=0, help="the newest N tickets left out of the snapshot"
    )
    j = sub.add_parser("join")
    j.add_argument("--size", type=int, default=1_000_000)
    j.add_argument("--collection", default="bench-100k")
    j.add_argument("--fixtures", type=Path, default=Path("/work/fixtures/bench"))
    j.add_argument("--port", type=int, default=8717)
    j.add_argument("--repeat", type=int, default=2)
    j.add_argument("--timeout", type=float, default=600)
    j.add_argument(
        "--snapshot",
        default="without,with",
        help="without: the worker rebuilds its BM25 index; with: TRIAGE_LEXICAL_SNAPSHOT_DIR set",
    )
    j.add_argument("--snapshot-dir", type=Path, default=Path("/tmp/lexical-join-snapshot"))
    j.add_argument(
        "--write-snapshot",
        action="store_true",
        help="run `triage lexical snapshot` even if the directory holds a snapshot",
    )
    for s in (r, j):
        s.add_argument("--db-prefix", default="bench", help="fixture databases PREFIX_100k ...")
        s.add_argument("--code", type=lambda x: Path(x).resolve(), default=BENCH.parent)
        s.add_argument("--json", type=Path)
    for mode in ("child-build", "child-load"):
        c = sub.add_parser(mode)
        c.add_argument("--database", required=True)
        c.add_argument("--snapshot", required=True)
        c.add_argument("--delta", type=int, default=0)
    args = p.parse_args()
    {
        "refresh": run_refresh,
        "join": run_join,
        "child-build": child_build,
        "child-load": child_load,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
