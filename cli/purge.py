"""`triage purge`: erase tickets' text, for an erasure request (``--ticket``) or a retention
period (``--older-than``). docs/operations.md ("Retention and erasure") says what is erased
where, and what the databases' own files keep until they are compacted."""

from __future__ import annotations

import getpass
import json
import re
from datetime import UTC, datetime, timedelta

import click

from cli.common import settings as load
from config.redis_client import connect
from tickets import db
from tickets.model import TicketKey
from worker.purge import purge as run_purge

_AGE = re.compile(r"^(\d+)([dh])$")


def parse_age(value: str) -> timedelta:
    """``365d`` or ``12h``."""
    found = _AGE.match(value.strip())
    if not found:
        raise click.BadParameter(f"{value!r}: give an age as days or hours, e.g. 365d or 12h")
    n, unit = int(found[1]), found[2]
    return timedelta(days=n) if unit == "d" else timedelta(hours=n)


def parse_key(value: str) -> TicketKey:
    source, sep, ticket_id = value.partition(":")
    if not sep or not source or not ticket_id:
        raise click.BadParameter(f"{value!r}: give a ticket as SOURCE:ID, e.g. zendesk:123")
    return TicketKey(source, ticket_id)


@click.command()
@click.option(
    "--ticket", "tickets", multiple=True, metavar="SOURCE:ID", help="A ticket to erase (repeat)."
)
@click.option("--older-than", metavar="AGE", help="Erase tickets received more than AGE ago.")
@click.option("--by", "requested_by", default=None, help="Who asks (the audit row; default: you).")
def purge(tickets: tuple[str, ...], older_than: str | None, requested_by: str | None) -> None:
    """Erase tickets' text (by key, or older than a retention period); decisions stay."""
    if bool(tickets) == bool(older_than):
        raise click.UsageError("give either --ticket SOURCE:ID (repeatable) or --older-than AGE")
    keys = [parse_key(t) for t in tickets]
    cutoff = datetime.now(UTC) - parse_age(older_than) if older_than else None
    settings = load()
    engine = db.make_engine(settings.database_url)
    client = connect(settings, timeout_s=30)
    try:
        result = run_purge(
            engine,
            requested_by=requested_by or getpass.getuser(),
            keys=keys,
            older_than=cutoff,
            redis_client=client,
            queues=[settings.queue],
            lexical_snapshot_dir=settings.lexical_snapshot_dir,
        )
    finally:
        engine.dispose()
        client.close()
    click.echo(json.dumps({"run": result.run_id, **result.counts}))
