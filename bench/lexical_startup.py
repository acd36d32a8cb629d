"""A new worker's start-up at scale: the BM25 index rebuilt from SQL, a snapshot prototype, and
a worker joining the cluster until its first decision.

    nice -n 10 python bench/lexical_startup.py refresh --sizes 100000,1000000 --code /work/main
    nice -n 10 python bench/lexical_startup.py join --size 1000000 --code /work/main

``refresh``: in a fresh process per size (the checkout's code first on ``sys.path``),
``LexicalIndex().refresh(engine)`` against the fixture database ``bench_{size}``
(bench/fixture.py): wall and CPU time, RSS before / after and peak (VmHWM). Then a prototype
of a persisted index, written by this script from the index's own arrays (no product code
changes): every posting list concatenated into two NumPy arrays (documents, term
frequencies) with per-term offsets, the keys and lengths beside them, and the SQL watermark;
saved with ``np.save`` (uncompressed). A second fresh process loads it into a LexicalIndex,
catches up from SQL by ticket id (``refresh`` from the saved watermark: the rows stored since)
and checks that its BM25 scores equal the rebuilt index's on 20 queries.

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
    from sqlalchemy import create_engine

    from worker.lexical import LexicalIndex

    engine = create_engine(args.database)
    rss0 = status_mib("VmRSS")
    w0, c0 = time.perf_counter(), time.process_time()
    index = LexicalIndex()
    added = index.refresh(engine)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rss1, hwm = status_mib("VmRSS"), status_mib("VmHWM")
    out: dict[str, Any] = {
        "tickets": added,
        "refresh_s": round(wall, 2),
        "refresh_cpu_s": round(cpu, 2),
        "rss_before_mib": round(rss0, 1),
        "rss_after_mib": round(rss1, 1),
        "rss_index_mib": round(rss1 - rss0, 1),
        "peak_rss_mib": round(hwm, 1),
        "terms": len(index._postings),
        "postings": sum(len(p[0]) for p in index._postings.values()),
    }
    # The snapshot prototype: the index's arrays, saved whole.
    queries = _queries(index)
    t = time.perf_counter()
    path = Path(args.snapshot)
    path.mkdir(parents=True, exist_ok=True)
    terms = list(index._postings)
    lengths = np.fromiter((len(index._postings[x][0]) for x in terms), np.int64, len(terms))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    docs = np.concatenate([np.frombuffer(index._postings[x][0], np.int32) for x in terms])
    tfs = np.concatenate([np.frombuffer(index._postings[x][1], np.float32) for x in terms])
    np.save(path / "docs.npy", docs)
    np.save(path / "tfs.npy", tfs)
    np.save(path / "offsets.npy", offsets)
    np.save(path / "lengths.npy", np.frombuffer(index._lengths, np.float32))
    np.save(path / "terms.npy", np.array(terms, dtype=str))
    np.save(path / "sources.npy", np.array([k.source for k in index.keys], dtype=str))
    np.save(path / "ticket_ids.npy", np.array([k.ticket_id for k in index.keys], dtype=str))
    (path / "meta.json").write_text(
        json.dumps(
            {"watermark": index.watermark, "total_length": index._total_length, "queries": queries}
        )
    )
    out["snapshot_save_s"] = round(time.perf_counter() - t, 2)
    np.save(path / "expected_scores.npy", np.stack([index.scores(q) for q in queries]))
    out["snapshot_mib"] = round(
        sum(f.stat().st_size for f in path.iterdir() if f.name != "expected_scores.npy") / 2**20, 1
    )
    print("RESULT " + json.dumps(out), flush=True)


def _queries(index: Any) -> list[str]:
    """Ticket texts from the fixture's own generator: realistic lexical queries."""
    from fixture import Generator

    chunk = Generator().chunk(499)
    return [f"{chunk['subjects'][k]} {chunk['bodies'][k]}" for k in range(QUERIES)]


def child_load(args: argparse.Namespace) -> None:
    from array import array

    from sqlalchemy import create_engine

    from tickets.model import TicketKey
    from worker.lexical import LexicalIndex

    path = Path(args.snapshot)
    rss0 = status_mib("VmRSS")
    w0, c0 = time.perf_counter(), time.process_time()
    meta = json.loads((path / "meta.json").read_text())
    docs = np.load(path / "docs.npy")
    tfs = np.load(path / "tfs.npy")
    offsets = np.load(path / "offsets.npy")
    terms = np.load(path / "terms.npy").tolist()
    index = LexicalIndex()
    index.keys = [
        TicketKey(s, t)
        for s, t in zip(
            np.load(path / "sources.npy").tolist(),
            np.load(path / "ticket_ids.npy").tolist(),
            strict=True,
        )
    ]
    index._position = {k: i for i, k in enumerate(index.keys)}
    index._lengths = array("f", np.load(path / "lengths.npy").tobytes())
    index._total_length = meta["total_length"]
    for j, term in enumerate(terms):
        lo, hi = offsets[j], offsets[j + 1]
        index._postings[term] = (
            array("i", docs[lo:hi].tobytes()),
            array("f", tfs[lo:hi].tobytes()),
        )
    index.watermark = meta["watermark"]
    load_s, load_cpu_s = time.perf_counter() - w0, time.process_time() - c0
    engine = create_engine(args.database)
    t, c = time.perf_counter(), time.process_time()
    caught_up = index.refresh(engine)
    catch_up_s, catch_up_cpu_s = time.perf_counter() - t, time.process_time() - c
    expected = np.load(path / "expected_scores.npy")
    got = np.stack([index.scores(q) for q in meta["queries"]])
    same = got.shape == expected.shape and bool(np.allclose(got, expected, rtol=1e-6, atol=1e-6))
    print(
        "RESULT "
        + json.dumps(
            {
                "load_s": round(load_s, 2),
                "load_cpu_s": round(load_cpu_s, 2),
                "catch_up_cpu_s": round(catch_up_cpu_s, 3),
                "catch_up_rows": caught_up,
                "catch_up_s": round(catch_up_s, 3),
                "rss_index_mib": round(status_mib("VmRSS") - rss0, 1),
                "peak_rss_mib": round(status_mib("VmHWM"), 1),
                "scores_equal_rebuilt": same,
            }
        ),
        flush=True,
    )


def _child(mode: str, code: Path, database: str, snapshot: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    proc = subprocess.run(
        [sys.executable, str(BENCH / "lexical_startup.py"), mode, "--database", database,
         "--snapshot", str(snapshot)],
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
            built = _child("child-build", args.code, database, snapshot)
            loaded = _child("child-load", args.code, database, snapshot)
        finally:
            cs.drop_db(db)
        r = {"size": size, "rebuild": built, "snapshot": loaded}
        results.append(r)
        print(
            f"{size:>8} tickets: refresh from SQL {built['refresh_s']} s (CPU "
            f"{built['refresh_cpu_s']} s), index RSS +{built['rss_index_mib']} MiB, peak "
            f"{built['peak_rss_mib']} MiB, {built['terms']} terms, {built['postings']} postings; "
            f"snapshot {built['snapshot_mib']} MiB saved in {built['snapshot_save_s']} s, loaded "
            f"in {loaded['load_s']} s (CPU {loaded['load_cpu_s']} s) + catch-up {loaded['catch_up_rows']} rows in "
            f"{loaded['catch_up_s']} s (RSS +{loaded['rss_index_mib']} MiB, peak "
            f"{loaded['peak_rss_mib']} MiB); scores equal: {loaded['scores_equal_rebuilt']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1) + "\n")


def run_join(args: argparse.Namespace) -> None:
    import critical_section as cs
    import redis

    cs.header(args, {"code": args.code})
    size = args.size
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
            for rep in range(args.repeat):
                results.append(_join_once(args, cs, env, url, rep, chroma.pid, redis))
    finally:
        cs.drop_db(db)
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "results": results}, indent=1) + "\n")


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
    }
    print(
        f"join {rep}: first decision {out['first_decision_s']} s after the process started "
        f"(runtime ready at {out['runtime_ready_s']} s: {out['phases']}; "
        f"{out['lexical_tickets']} tickets indexed)",
        flush=True,
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("refresh")
    r.add_argument("--sizes", default="100000,1000000")
    r.add_argument("--db-prefix", default="bench", help="fixture databases PREFIX_100k ...")
    r.add_argument("--snapshots", type=Path, default=SNAPSHOTS)
    j = sub.add_parser("join")
    j.add_argument("--size", type=int, default=1_000_000)
    j.add_argument("--collection", default="bench-100k")
    j.add_argument("--fixtures", type=Path, default=Path("/work/fixtures/bench"))
    j.add_argument("--port", type=int, default=8717)
    j.add_argument("--repeat", type=int, default=2)
    j.add_argument("--timeout", type=float, default=600)
    for s in (r, j):
        s.add_argument("--code", type=lambda x: Path(x).resolve(), default=BENCH.parent)
        s.add_argument("--json", type=Path)
    for mode in ("child-build", "child-load"):
        c = sub.add_parser(mode)
        c.add_argument("--database", required=True)
        c.add_argument("--snapshot", required=True)
    args = p.parse_args()
    {
        "refresh": run_refresh,
        "join": run_join,
        "child-build": child_build,
        "child-load": child_load,
    }[args.cmd](args)


if __name__ == "__main__":
    main()
