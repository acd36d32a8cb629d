"""`triage ingest`: a CSV or JSONL file onto the queue, with backpressure and per-row errors."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import click
import redis
from tqdm import tqdm

from cli.common import settings as load
from config.celery_app import create_app
from config.redis_client import connect as redis_connect
from config.settings import Settings, mask_url
from producer.guards import QueueFull, QueueGate, wait_for_room
from producer.importer import RowError, check_encoding, detect_format, read_tickets
from tickets.ledger import Ledger
from tickets.model import Ticket
from tickets.queue import PUBLISH_BATCH, BrokerUnavailable, publish


def _encoding(value: str) -> str:
    try:
        return check_encoding(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
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
    summary = ingest_file(
        load(),
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
    try:
        fmt = fmt or detect_format(file)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    errors: list[RowError] = []

    def good_rows() -> Iterator[Ticket]:
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
    client = redis_connect(settings, timeout_s=10)
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

    def with_backpressure(rows: Iterable[Ticket]) -> Iterator[Ticket]:
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
        for _ in publish(
            app,
            with_backpressure(good_rows()),
            mode="backfill" if backfill else "route",
            per_message=per_message,
            ledger=Ledger(client, settings.queue),
        ):
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
