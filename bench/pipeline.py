"""Whole-pipeline throughput next to the engine alone, measured side by side in one run.

    python bench/pipeline.py --data $DATA/gitbugs/hadoop/hadoop_bugs.csv -n 2000

($DATA: the public data sets, not shipped; docs/quality.md, "Data", gives their sources.)

For each run: (1) the local embedder alone on the same texts, in batches of
TRIAGE_BATCH_SIZE; (2) `triage ingest` + one real worker process (Redis, embedded Chroma,
SQLite) from the first publish to the last decision row; (3) the same with `--backfill`.
Prints medians, the pipeline / engine ratio, and the machine and versions; `--json FILE`
also writes them. The data file is a CSV/JSONL the importer reads, or a GitBugs CSV
(`Issue id, Summary, Description`), or the STS-B .tsv.gz (its first sentences:
short, ticket-title-length texts).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from config.settings import load_settings  # noqa: E402
from tickets import db, migrate  # noqa: E402
from tickets.model import Ticket  # noqa: E402
from worker.text import embedding_text  # noqa: E402


def load(path: Path, n: int) -> list[Ticket]:
    csv.field_size_limit(10**8)
    if path.name.endswith(".tsv.gz"):  # STS-B: short single sentences, ticket-title length
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
            pairs = list(reader)
        # First sentences first (the recorded 2,000-ticket runs), then the second ones: the
        # set holds 8,628 pairs, so 10,000 tickets need both.
        rows = [
            {"id": f"{r['sid']}-{i}-{col[-1]}", "body": r[col]}
            for col in ("sentence1", "sentence2")
            for i, r in enumerate(pairs)
        ]
    elif path.suffix == ".tsv":  # LCQMC: short Chinese questions, one ticket per sentence
        with path.open(encoding="utf-8") as fh:
            sentences = [x.split("\t")[0] for x in fh if x.strip()]
        rows = [{"id": f"q{i}", "body": s} for i, s in enumerate(dict.fromkeys(sentences))]
    else:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = (
                list(csv.DictReader(fh))
                if path.suffix == ".csv"
                else [json.loads(x) for x in fh if x.strip()]
            )
    out = []
    for i, r in enumerate(rows):
        tid = r.get("Issue id") or r.get("id") or str(i)
        subject = r.get("Summary") or r.get("subject")
        body = r.get("Description") or r.get("body") or r.get("content") or ""
        if not (subject or body.strip()):
            continue
        out.append(Ticket(source="bench", ticket_id=str(tid), subject=subject, body=body[:20000]))
        if len(out) == n:
            break
    return out


CPU: dict[str, list[float]] = {}  # core-ms per ticket, by variant (where the time goes)
PUBLISH: dict[str, list[float]] = {}  # seconds the producer took to publish, by variant


def engine_alone(texts: list[str], batch: int, embedder: str = "local") -> float:
    from worker.embedding import make_embedder

    # TRIAGE_OPENAI_* of this environment say which server and model ``openai`` means.
    emb = make_embedder(load_settings(embedder=embedder))
    emb.embed(texts[:8])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), batch):
        emb.embed(texts[i : i + batch])
    CPU.setdefault("engine", []).append((time.process_time() - c0) * 1000 / len(texts))
    return len(texts) / (time.perf_counter() - t0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pipeline(
    tickets: list[Ticket],
    *,
    backfill: bool,
    redis_url: str,
    batch: int,
    profile: Path | None = None,
    per_message: int | None = None,
    hybrid_alpha: float | None = None,
    embedder: str = "local",
) -> float:
    import redis

    from config.celery_app import create_app
    from tickets.ledger import Ledger
    from tickets.queue import publish

    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env.update(
            TRIAGE_REDIS_URL=redis_url,
            TRIAGE_DATABASE_URL=f"sqlite:///{tmp}/triage.db",
            TRIAGE_CHROMA_PATH=f"{tmp}/chroma",
            TRIAGE_QUEUE=f"bench-{uuid.uuid4().hex[:8]}",
            TRIAGE_BATCH_SIZE=str(batch),
        )
        if hybrid_alpha is not None:
            env["TRIAGE_HYBRID_ALPHA"] = str(hybrid_alpha)
        env["TRIAGE_EMBEDDER"] = embedder
        if embedder == "openai":
            env.update({k: v for k, v in os.environ.items() if k.startswith("TRIAGE_OPENAI_")})
        settings = load_settings(
            redis_url=redis_url,
            database_url=env["TRIAGE_DATABASE_URL"],
            chroma_path=Path(env["TRIAGE_CHROMA_PATH"]),
            queue=env["TRIAGE_QUEUE"],
            batch_size=batch,
        )
        engine = db.make_engine(settings.database_url)
        migrate.upgrade(engine)
        log = Path(tmp) / "worker.log"
        variant = "backfill" if backfill else "routed"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--loglevel", "INFO"],
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
            try:
                while " ready." not in log.read_text(errors="replace"):
                    if proc.poll() is not None:
                        raise SystemExit(log.read_text())
                    time.sleep(0.1)
                table = db.TicketRow if backfill else db.DecisionRow
                spy = None
                if profile is not None:
                    # Where the worker's time goes: py-spy samples its running threads.
                    profile.mkdir(parents=True, exist_ok=True)
                    spy = subprocess.Popen(
                        ["py-spy", "record", "--pid", str(proc.pid), "--rate", "100",
                         "--format", "raw", "--nonblocking", "--output",
                         str(profile / f"{variant}-{len(tickets)}-{uuid.uuid4().hex[:6]}.txt")],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                cpu0 = cpu_seconds(proc.pid)
                t0 = time.perf_counter()
                # As `triage ingest` publishes: grouped messages, each chunk in the ledger.
                for _ in publish(
                    create_app(settings),
                    tickets,
                    mode="backfill" if backfill else "route",
                    per_message=per_message or batch,
                    ledger=Ledger(redis.Redis.from_url(redis_url), settings.queue),
                ):
                    pass
                PUBLISH.setdefault(variant, []).append(time.perf_counter() - t0)
                while True:
                    with Session(engine) as s:
                        done = int(s.scalar(select(func.count()).select_from(table)) or 0)
                        failed = int(s.scalar(select(func.count()).select_from(db.FailureRow)) or 0)
                    if done + failed >= len(tickets):
                        break
                    time.sleep(0.05)
                elapsed = time.perf_counter() - t0
                CPU.setdefault(variant, []).append(
                    (cpu_seconds(proc.pid) - cpu0) * 1000 / len(tickets)
                )
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
            finally:
                proc.terminate()
                proc.wait(60)
        engine.dispose()
        if failed:
            print(f"  warning: {failed} tickets failed", file=sys.stderr)
        return len(tickets) / elapsed


# Frames that name a stage, matched from the innermost frame outwards: the first match wins.
STAGES = (
    ("embedding (onnxruntime + tokenizer)", ("worker/embedding/", "onnxruntime", "tokenizers")),
    ("Chroma", ("chromadb",)),
    ("SQL", ("sqlalchemy", "sqlite3", "psycopg", "alembic")),
    ("Celery + Redis", ("celery/", "kombu/", "redis/", "billiard/", "amqp/", "vine/")),
    ("text preparation", ("worker/text.py", "bs4/", "html/")),
    ("routing + pipeline", ("worker/", "tickets/")),
)


def profile_summary(path: Path) -> dict[str, float]:
    """Share of the worker's sampled running time per stage, from py-spy's collapsed stacks."""
    counts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")[::-1]
        stage = next(
            (
                name
                for frame in frames
                for name, marks in STAGES
                if any(mark in frame for mark in marks)
            ),
            "other",
        )
        counts[stage] = counts.get(stage, 0) + int(n)
    total = sum(counts.values()) or 1
    return {k: v / total for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--redis-url", default=os.environ.get("TRIAGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--per-message",
        type=int,
        default=None,
        help="tickets per queue message (default: the batch size, as `triage ingest`; 1: one each)",
    )
    ap.add_argument(
        "--hybrid-alpha", type=float, default=None, help="TRIAGE_HYBRID_ALPHA for the worker"
    )
    ap.add_argument(
        "--embedders",
        default="local",
        help="comma list of TRIAGE_EMBEDDER backends measured side by side, e.g. local,openai "
        "(openai: the server and model of this environment's TRIAGE_OPENAI_*)",
    )
    ap.add_argument(
        "--variants",
        default="routed,backfill",
        help="comma list of the pipeline variants to run: routed, backfill",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the worker with py-spy (pip install py-spy) into DIR, collapsed stacks",
    )
    args = ap.parse_args()

    tickets = load(args.data, args.n)
    texts = [embedding_text(t) for t in tickets]
    versions = {
        d: metadata.version(d) for d in ("celery", "chromadb", "onnxruntime", "sqlalchemy", "numpy")
    }
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        "?",
    )
    print(f"machine: {os.cpu_count()} cores, {cpu}; python {platform.python_version()}; {versions}")
    print(
        f"data: {len(tickets)} tickets from {args.data}, batch {args.batch_size}, {args.runs} "
        f"run(s), {args.per_message or args.batch_size} per message, hybrid alpha "
        f"{'default' if args.hybrid_alpha is None else args.hybrid_alpha}"
    )
    embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results: dict[str, list[float]] = {}

    def name(embedder: str, what: str) -> str:
        return what if embedders == ["local"] else f"{embedder} {what}"

    for run in range(args.runs):
        # Interleaved so that the machine's background load hits every variant alike.
        for embedder in embedders:
            results.setdefault(name(embedder, "engine"), []).append(
                engine_alone(texts, args.batch_size, embedder)
            )
            for variant in variants:
                results.setdefault(name(embedder, variant), []).append(
                    pipeline(
                        tickets,
                        backfill=variant == "backfill",
                        redis_url=args.redis_url,
                        batch=args.batch_size,
                        profile=args.profile,
                        per_message=args.per_message,
                        hybrid_alpha=args.hybrid_alpha,
                        embedder=embedder,
                    )
                )
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in results.items()))
    if embedders != ["local"] or variants != ["routed", "backfill"]:
        med = {k: statistics.median(v) for k, v in results.items()}
        for embedder in embedders:
            engine = med[name(embedder, "engine")]
            print(
                f"{embedder}: median engine alone {engine:.1f} texts/s; "
                + "; ".join(
                    f"{v} {med[name(embedder, v)]:.1f} tickets/s "
                    f"({med[name(embedder, v)] / engine:.2f}x engine)"
                    for v in variants
                )
            )
        if args.json:
            args.json.write_text(json.dumps({"runs": results, "median": med}, indent=2))
        return
    med = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"median texts|tickets/s: engine alone {med['engine']:.1f}, ingest+worker routed {med['routed']:.1f} "
        f"({med['routed'] / med['engine']:.2f}x engine), backfill {med['backfill']:.1f} "
        f"({med['backfill'] / med['engine']:.2f}x engine)"
    )
    cpu_med = {k: statistics.median(v) for k, v in CPU.items()}
    publish_med = {k: statistics.median(v) for k, v in PUBLISH.items()}
    print(
        "median CPU per ticket (core-ms): engine alone "
        f"{cpu_med['engine']:.1f}; worker process routed {cpu_med['routed']:.1f}, backfill "
        f"{cpu_med['backfill']:.1f}; publishing took {publish_med['routed']:.1f} s routed, "
        f"{publish_med['backfill']:.1f} s backfill"
    )
    profiles = {}
    if args.profile:
        for file in sorted(args.profile.glob("*.txt")):
            profiles[file.name] = profile_summary(file)
            print(
                f"worker profile {file.name}: "
                + ", ".join(f"{k} {100 * v:.0f}%" for k, v in profiles[file.name].items())
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "versions": versions,
                    "cpu": cpu,
                    "n": len(tickets),
                    "runs": results,
                    "median": med,
                    "cpu_ms_per_ticket": CPU,
                    "publish_s": PUBLISH,
                    "profile_share": profiles,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
