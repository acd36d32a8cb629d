"""`triage actions`: the outbox's deliveries (pending, failed, dead), and `--redrive`."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import click
from kombu.exceptions import OperationalError
from sqlalchemy.orm import Session

from actions.helpdesks import base as helpdesks
from actions.helpdesks import preview
from actions.outbox import Publisher
from cli.common import format_option, print_rows
from cli.common import settings as load
from config.settings import mask_url
from tickets import db, outbox

# What needs a look by default: not delivered yet, or never will be without a redrive.
OPEN_AND_DEAD = (outbox.PENDING, outbox.SENDING, outbox.FAILED, outbox.DEAD)
COLUMNS = (
    *("action_id", "source", "ticket_id", "kind", "target", "status", "attempts"),
    *("next_attempt_at", "last_status", "last_error", "created_at"),
)


@click.command()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(outbox.STATUSES),
    help="Only these states (repeatable; default: pending, sending, failed, dead).",
)
@click.option("-n", "--limit", default=50, show_default=True)
@format_option
@click.option(
    "--redrive",
    is_flag=True,
    help="Send the dead actions again (all, or those given with --id), each with its own id.",
)
@click.option("--id", "action_ids", multiple=True, help="An action id for --redrive (repeatable).")
def actions(
    statuses: tuple[str, ...], limit: int, fmt: str, redrive: bool, action_ids: tuple[str, ...]
) -> None:
    """List the outbox's pending, failed and dead deliveries; --redrive sends the dead ones
    again.

    An action is what a decision causes outside: a signed webhook per URL of
    TRIAGE_OUTBOUND_WEBHOOK_URL, and the write-back (kind helpdesk) into the ticket's own
    helpdesk when its credential is set. last_error holds the receiver's status and the
    start of its answer. With --format json, each write-back also shows what it writes
    (tags and note, rendered now): how to read a TRIAGE_ACTIONS_DRY_RUN trial.
    """
    settings = load()
    engine = db.make_engine(settings.database_url)
    try:
        if redrive:
            grace = datetime.now(UTC) + timedelta(seconds=settings.actions_lease_s)
            with Session(engine) as session:
                ids = outbox.redrive(session, grace, action_ids or None)
            try:
                Publisher(settings)(ids)
            except (OperationalError, OSError) as exc:
                click.echo(
                    f"{len(ids)} action(s) re-queued in SQL; the broker refused the publish "
                    f"({exc}): the workers' sweep sends them",
                    err=True,
                )
                sys.exit(1)
            click.echo(f"{len(ids)} dead action(s) sent again")
            return
        with Session(engine) as session:
            found = outbox.listing(session, statuses or OPEN_AND_DEAD, limit)
            rows = [
                {
                    c: mask_url(getattr(r, c)) if c == "target" else _cell(getattr(r, c))
                    for c in COLUMNS
                }
                for r in found
            ]
        if fmt == "json":
            # The write-back each helpdesk action makes (rendered now): what a dry run shows.
            for row, r in zip(rows, found, strict=True):
                if r.kind == helpdesks.KIND:
                    row["writes"] = preview(settings, engine, r.action_id, r.target, r.payload)
        print_rows(rows, fmt)
    finally:
        engine.dispose()


def _cell(value: object) -> object:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else value
