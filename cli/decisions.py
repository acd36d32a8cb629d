"""`triage decisions`: the most recent decisions (or failures) as a table, JSON or CSV."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from cli.common import format_option, print_rows
from cli.common import settings as load
from config.settings import Settings
from tickets import db


@click.command()
@click.option("-n", "--limit", default=20, show_default=True)
@click.option("--route", type=click.Choice(["duplicate", "suggest", "manual"]), default=None)
@format_option
@click.option("--failures", is_flag=True, help="Show the failure table instead.")
def decisions(limit: int, route: str | None, fmt: str, failures: bool) -> None:
    """Print the most recent decisions (or failures)."""
    settings = load()
    rows = (
        recent_failures(settings, limit) if failures else recent_decisions(settings, limit, route)
    )
    print_rows(rows, fmt)


DECISION_COLUMNS = (
    *("source", "ticket_id", "route", "score", "matched_ticket_id", "canonical_ticket_id"),
    *("queue", "subject", "decided_at"),
)
FAILURE_COLUMNS = ("source", "ticket_id", "error_type", "reason", "attempts", "failed_at")


def recent_decisions(
    settings: Settings, limit: int, route: str | None = None
) -> list[dict[str, Any]]:
    d = db.DecisionRow
    stmt = select(d).order_by(d.decided_at.desc(), d.id.desc())
    if route:
        stmt = stmt.where(d.route == route)
    return _read(settings, stmt.limit(limit), DECISION_COLUMNS)


def recent_failures(settings: Settings, limit: int) -> list[dict[str, Any]]:
    stmt = select(db.FailureRow).order_by(db.FailureRow.failed_at.desc()).limit(limit)
    return _read(settings, stmt, FAILURE_COLUMNS)


def _read(settings: Settings, stmt: Select[Any], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows ``stmt`` selects, as ``columns`` (times to the second, ISO 8601)."""
    engine = db.make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            return [{c: _cell(getattr(row, c)) for c in columns} for row in session.scalars(stmt)]
    finally:
        engine.dispose()


def _cell(value: Any) -> Any:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else value
