"""What every `triage` command shares: settings that stop the command with a message naming
the bad TRIAGE_* variable (exit code 2), logging, and the table / JSON / CSV printer."""

from __future__ import annotations

import csv
import json
import logging
import sys
from typing import Any

import click

from config.settings import Settings, SettingsError, load_settings


def settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        click.echo(f"triage: {exc}", err=True)
        sys.exit(2)


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
    cells = [[clip(_cell(r[c]), 48) for c in cols] for r in rows]
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


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# `--format` of the commands that print rows.
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
