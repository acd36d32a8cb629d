"""Read-side helpers for the CLI: recent decisions and failures, and `triage doctor`."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from config.settings import Settings, mask_url
from worker import db, migrate


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


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def doctor_checks(settings: Settings) -> Iterator[tuple[str, bool, str]]:
    """Yield (component, ok, detail) for every dependency the worker needs."""
    yield (
        "python",
        True,
        f"{platform.python_version()}; celery {_version('celery')}, chromadb {_version('chromadb')}, "
        f"sqlalchemy {_version('sqlalchemy')}, onnxruntime {_version('onnxruntime')}",
    )

    import redis

    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3)
        info = client.info("server")
        depth = client.llen(settings.queue)
        yield (
            "redis",
            True,
            f"{mask_url(settings.redis_url)}: redis {info['redis_version']}, queue {settings.queue!r} holds {depth}",
        )
    except Exception as exc:
        yield "redis", False, f"{mask_url(settings.redis_url)}: {exc}"

    try:
        engine = db.make_engine(settings.database_url)
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                version = "sqlite " + str(conn.execute(text("select sqlite_version()")).scalar())
            else:
                version = str(conn.execute(text("select version()")).scalar()).split(",")[0]
        current, head = migrate.current_revision(engine), migrate.head_revision()
        schema_ok = current == head
        hint = "" if schema_ok else " (run `triage db upgrade`)"
        yield (
            "database",
            schema_ok,
            f"{engine.url.render_as_string()}: {version}, schema {current or 'none'}/{head}{hint}",
        )
        engine.dispose()
    except Exception as exc:
        yield "database", False, f"{mask_url(settings.database_url)}: {exc}"

    from worker.embedding import make_embedder
    from worker.errors import StoreLocked, TriageError
    from worker.store import opened_store

    try:
        embedder = make_embedder(settings)
        embedder.check()
        detail = ", ".join(f"{k} {v}" for k, v in embedder.describe().items())
        yield "embedder", True, detail
    except Exception as exc:
        yield "embedder", False, f"{settings.embedder}: {exc}"
        return

    try:
        from worker.reindex import active_collection

        with opened_store(
            settings, embedder, active_collection(db.make_engine(settings.database_url), settings)
        ) as store:
            detail = ", ".join(f"{k} {v}" for k, v in store.describe().items())
        yield "chroma", True, detail
    except StoreLocked as exc:
        # A running worker owns the embedded store: that is the healthy state.
        yield (
            "chroma",
            True,
            f"{settings.chroma_path}: owned by a running worker ({str(exc).split('(')[1].split(')')[0]})",
        )
    except TriageError as exc:
        yield "chroma", False, str(exc)
