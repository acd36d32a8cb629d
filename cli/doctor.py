"""`triage doctor`: every dependency checked, with its version."""

from __future__ import annotations

import sys

import click

from cli.common import settings as load
from service.health import doctor_checks, doctor_line


@click.command()
def doctor() -> None:
    """Check Redis, the queue and its workers, the database, the embedder and Chroma; print
    their versions. Exit code 1 if any is not ready (no live worker is only a warning)."""
    settings = load()
    ok = True
    for check in doctor_checks(settings):
        ok &= check.ok or check.warning
        click.echo(doctor_line(check))
    sys.exit(0 if ok else 1)
