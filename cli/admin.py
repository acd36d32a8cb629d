"""Administration: `triage db upgrade`, `triage reindex`, `triage redrive`."""

from __future__ import annotations

import sys

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from cli.common import clip, setup_logging
from cli.common import settings as load
from config.celery_app import create_app
from config.redis_client import connect as redis_connect
from tickets import db, migrate
from tickets.errors import TriageError
from tickets.ledger import Ledger
from tickets.queue import BrokerUnavailable, publish
from worker.embedding import make_embedder
from worker.redrive import parse_since
from worker.redrive import redrive as run_redrive
from worker.reindex import reindex as run_reindex


@click.group("db")
def db_group() -> None:
    """Database schema commands."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the tables to the newest schema."""
    settings = load()
    engine = db.make_engine(settings.database_url)
    revision = migrate.upgrade(engine)
    click.echo(f"database {engine.url.render_as_string()} is at schema {revision}")


@click.command()
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
    settings = load()
    setup_logging("WARNING")
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


@click.command()
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
    settings = load()
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
    ledger = Ledger(redis_connect(settings, timeout_s=10), settings.queue)
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
            f"{clip(item.reason, 80)}{detail}"
        )
    verb = "would publish" if dry_run else "published"
    click.echo(
        f"{report.count('would publish' if dry_run else 'published')} {verb} on queue "
        f"{settings.queue!r}, {report.count('already decided')} already decided, "
        f"{len(report.unavailable)} unavailable",
        err=True,
    )
    sys.exit(1 if report.unavailable else 0)
