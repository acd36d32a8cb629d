"""Read-side helpers for the CLI: recent decisions and failures."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.settings import Settings
from tickets import db


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


def route_counts(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(db.DecisionRow.route, func.count()).group_by(db.DecisionRow.route)
    ).all()
    return {route: int(n) for route, n in rows}
