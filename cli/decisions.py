"""`triage decisions`: the most recent decisions (or failures) as a table, JSON or CSV."""

from __future__ import annotations

from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from cli.common import print_rows
from cli.common import settings as load
from config.settings import Settings
from tickets import db


@click.command()
@click.option("-n", "--limit", default=20, show_default=True)
@click.option("--route", type=click.Choice(["duplicate", "suggest", "manual"]), default=None)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option("--failures", is_flag=True, help="Show the failure table instead.")
def decisions(limit: int, route: str | None, fmt: str, failures: bool) -> None:
    """Print the most recent decisions (or failures)."""
    settings = load()
    rows = (
        recent_failures(settings, limit) if failures else recent_decisions(settings, limit, route)
    )
    print_rows(rows, fmt)


def recent_decisions(
    settings: Settings, limit: int, route: str | None = None
) -> list[dict[str, Any]]:
    engine = db.make_engine(settings.database_url)
    stmt = select(db.DecisionRow).order_by(
        db.DecisionRow.decided_at.desc(), db.DecisionRow.id.desc()
    )
    if route:
        stmt = stmt.where(db.DecisionRow.route == route)
    with Session(engine) as session:
        rows = session.scalars(stmt.limit(limit)).all()
        out = [
            {
                "source": r.source,
                "ticket_id": r.ticket_id,
                "route": r.route,
                "score": r.score,
                "matched_ticket_id": r.matched_ticket_id,
                "canonical_ticket_id": r.canonical_ticket_id,
                "queue": r.queue,
                "subject": r.subject,
                "decided_at": r.decided_at.isoformat(timespec="seconds"),
            }
            for r in rows
        ]
    engine.dispose()
    return out


def recent_failures(settings: Settings, limit: int) -> list[dict[str, Any]]:
    engine = db.make_engine(settings.database_url)
    with Session(engine) as session:
        rows = session.scalars(
            select(db.FailureRow).order_by(db.FailureRow.failed_at.desc()).limit(limit)
        ).all()
        out = [
            {
                "source": r.source,
                "ticket_id": r.ticket_id,
                "error_type": r.error_type,
                "reason": r.reason,
                "attempts": r.attempts,
                "failed_at": r.failed_at.isoformat(timespec="seconds"),
            }
            for r in rows
        ]
    engine.dispose()
    return out
