"""`triage serve`: the HTTP service under uvicorn."""

from __future__ import annotations

import click

from cli.common import settings as load
from cli.common import setup_logging
from service import server
from service.app import create_app


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, help="TCP port.")
def serve(host: str, port: int) -> None:
    """Run the HTTP service: helpdesk webhooks, ticket ingest, read API, health, metrics."""
    settings = load()
    setup_logging(settings.log_level)
    server.run(create_app(settings), settings, host=host, port=port)
