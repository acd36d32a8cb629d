"""`triage worker`: a Celery worker on TRIAGE_QUEUE."""

from __future__ import annotations

import sys

import click

from cli.common import settings as load
from cli.common import setup_logging
from config.celery_app import app
from tickets.errors import TriageError
from worker.runtime import get_runtime


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--loglevel", default=None, help="Celery log level (default: TRIAGE_LOG_LEVEL).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(loglevel: str | None, celery_args: tuple[str, ...]) -> None:
    """Run a triage worker (same as `celery -A config.celery_app worker`).

    Extra arguments go to Celery, e.g. `triage worker --concurrency 128`.
    """
    settings = load()
    setup_logging(settings.log_level)
    try:
        # Load the model and open the store now: a wrong model, a locked store or an old
        # schema stops here with its message, before any message is taken.
        get_runtime()
    except (TriageError, RuntimeError) as exc:
        click.echo(f"triage worker: {exc}", err=True)
        sys.exit(1)
    argv = ["worker", "--loglevel", loglevel or settings.log_level, "-Q", settings.queue]
    app.worker_main([*argv, *celery_args])
