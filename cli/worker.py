"""`triage worker`: a Celery worker on TRIAGE_QUEUE."""

from __future__ import annotations

import os
import sys

import click

from cli.common import settings as load
from cli.common import setup_logging
from config.celery_app import app
from config.settings import ENV_PREFIX
from tickets.errors import TriageError
from worker.runtime import get_delivery_runtime, get_runtime


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", default=None, help="Celery log level (default: TRIAGE_LOG_LEVEL).")
@click.option(
    "--role",
    type=click.Choice(["all", "tickets", "deliveries"]),
    default=None,
    help="What this worker consumes (default: TRIAGE_WORKER_ROLE, `all`).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(loglevel: str | None, role: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a triage worker (same as `celery -A config.celery_app worker`).

    Extra arguments go to Celery, e.g. `triage worker --concurrency 128`.
    `--role deliveries` runs a worker of outbox deliveries only: no model, no store.
    """
    if role is not None:
        # Celery's signal handlers read the role from the settings, as every process does.
        os.environ[f"{ENV_PREFIX}WORKER_ROLE"] = role
    settings = load()
    setup_logging(settings.log_level)
    try:
        # Load the model and open the store now: a wrong model, a locked store or an old
        # schema stops here with its message, before any message is taken.
        if settings.worker_role == "deliveries":
            get_delivery_runtime()
        else:
            get_runtime()
    except (TriageError, RuntimeError) as exc:
        click.echo(f"triage worker: {exc}", err=True)
        sys.exit(1)
    argv = ["worker", "--loglevel", loglevel or settings.log_level, "-Q", settings.queue]
    app.worker_main([*argv, *celery_args])
