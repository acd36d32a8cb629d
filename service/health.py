"""Health and readiness: one set of checks for ``/readyz``, ``/v1/status`` and `triage doctor`.

Each check returns a :class:`Check`: ``ok``, a ``reason`` that is a short fixed phrase (safe
to show anyone: no URL, path, host name or raw error) and a ``detail`` for operators (URLs
with their passwords masked, latency, schema revisions, queue depth, live workers), shown
only behind the read token and by `triage doctor`.

- ``GET /healthz`` does no I/O at all (service/routers/ops.py): it answers even while Redis or
  the database hang and every request thread is taken.
- ``GET /readyz`` (open) is ``{"ready", "reason"}`` only, from :class:`Readiness`: the checks
  run on a small executor of their own with about a second each, at most one round at a
  time, and the answer is kept for ``cache_s``, so probes neither pile up nor add load.
  Worker liveness is not part of it: accepted tickets wait safely in the queue, and an
  autoscaler must still see `serve` as ready.
- ``GET /v1/status`` (read scope) is every check with its detail, workers and queue included.
- `triage doctor` prints the same checks, plus versions, the model loaded for real and the
  Chroma store (:func:`doctor_checks`).
"""

from __future__ import annotations

import asyncio
import logging
import platform
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from config.redis_client import connect as redis_connect
from config.settings import Settings, mask_url
from producer.guards import UNACKED_KEY
from tickets import heartbeat, migrate
from tickets.db import make_engine
from tickets.errors import ModelMismatch, StoreLocked, TriageError
from worker.coverage import CoverageGuard
from worker.embedding import make_embedder
from worker.embedding.local import REQUIRED_FILES, packaged_model_dir
from worker.reindex import active_collection
from worker.store import opened_store
from worker.thresholds import load_for_model, model_advice

logger = logging.getLogger(__name__)

# The one hint every "schema" reason carries: the command that fixes it.
SCHEMA_NOT_CREATED = "schema not created: run `triage db upgrade`"
SCHEMA_NOT_CURRENT = "schema not current: run `triage db upgrade`"
# How long one check may take in `serve` before it counts as failed (probes call every few
# seconds; a dependency slower than this is not ready to take traffic).
CHECK_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    # A short fixed phrase: "ok", "redis unreachable", ... (doctor-only checks: their line)
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
    warning: bool = False  # not ok, yet not a reason to refuse traffic (no live worker)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, **self.detail}


def _short(exc: BaseException) -> str:
    """An error for operators: its first line, URLs in it masked."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return mask_url(line)[:300]


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 1)


# --- the checks ---------------------------------------------------------------------------


def redis_client(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> redis.Redis:
    return redis_connect(settings, timeout_s=timeout_s)


def check_redis(client: redis.Redis, settings: Settings) -> Check:
    where = {"url": mask_url(settings.redis_url)}
    start = time.monotonic()
    try:
        info = client.info("server")
        if settings.uses_sentinel:
            # The server the sentinels name now: after a failover, the new master.
            host, port = client.connection_pool.get_master_address()  # type: ignore[attr-defined]
            where["master"] = f"{host}:{port}"
    except redis.RedisError as exc:
        return Check("redis", False, "redis unreachable", {**where, "error": _short(exc)})
    return Check(
        "redis",
        True,
        "ok",
        {**where, "version": str(info.get("redis_version")), "latency_ms": _ms(start)},
    )


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(str(parsed.database))


def _probe_engine(url: str, timeout_s: float) -> Engine:
    """A throw-away engine with short timeouts. SQLite: the file must exist (opening a
    missing one would create it, and the checks must create nothing)."""
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        path = str(sqlite_file)
        return create_engine(
            "sqlite://",
            creator=lambda: sqlite3.connect(path, timeout=timeout_s),
            poolclass=NullPool,
        )
    connect_args: dict[str, Any] = {"connect_timeout": max(1, round(timeout_s))}
    if make_url(url).get_backend_name() == "postgresql":
        # The server ends a statement that runs longer: a hung query cannot hold the check.
        connect_args["options"] = f"-c statement_timeout={int(timeout_s * 1000)}"
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def check_database(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    url = settings.database_url
    head = migrate.head_revision()
    where: dict[str, Any] = {"url": mask_url(url), "schema": None, "expected": head}
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.is_file():
        return Check("database", False, SCHEMA_NOT_CREATED, where)
    start = time.monotonic()
    engine = _probe_engine(url, timeout_s)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                version = "sqlite " + str(conn.execute(text("select sqlite_version()")).scalar())
            else:
                version = str(conn.execute(text("select version()")).scalar()).split(",")[0]
        current = migrate.current_revision(engine)
    except Exception as exc:
        return Check("database", False, "database unreachable", {**where, "error": _short(exc)})
    finally:
        engine.dispose()
    where |= {"schema": current, "version": version, "latency_ms": _ms(start)}
    if current is None:
        return Check("database", False, SCHEMA_NOT_CREATED, where)
    if current != head:
        return Check("database", False, SCHEMA_NOT_CURRENT, where)
    return Check("database", True, "ok", where)


def check_embedder_config(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> Check:
    """The embedder's configuration is usable, without loading a model in the web process."""
    if settings.embedder == "local":
        try:
            folder = (
                Path(settings.local_model_path)
                if settings.local_model_path
                else packaged_model_dir()
            )
        except TriageError:
            return Check("embedder", False, "embedder not configured", {"kind": "local"})
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        detail: dict[str, Any] = {"kind": "local", "model": folder.name}
        if missing:
            return Check(
                "embedder", False, "embedder not configured", {**detail, "missing": missing}
            )
        return Check("embedder", True, "ok", detail)
    import requests

    detail = {
        "kind": "ollama",
        "model": settings.ollama_model,
        "url": mask_url(settings.ollama_url),
    }
    start = time.monotonic()
    try:
        answer = requests.get(settings.ollama_url.rstrip("/") + "/", timeout=timeout_s)
    except requests.RequestException as exc:
        return Check("embedder", False, "embedder unreachable", {**detail, "error": _short(exc)})
    detail |= {"status": answer.status_code, "latency_ms": _ms(start)}
    if not answer.ok:
        return Check("embedder", False, "embedder unreachable", detail)
    return Check("embedder", True, "ok", detail)


def check_queue(client: redis.Redis, settings: Settings) -> Check:
    try:
        pipe = client.pipeline(transaction=False)
        pipe.llen(settings.queue)
        pipe.hlen(UNACKED_KEY)
        waiting, unacked = pipe.execute()
    except redis.RedisError as exc:
        return Check("queue", False, "redis unreachable", {"error": _short(exc)})
    detail = {"name": settings.queue, "waiting": int(waiting), "unacked": int(unacked)}
    return Check("queue", True, "ok", detail)


def check_workers(client: redis.Redis, settings: Settings) -> Check:
    try:
        beats = heartbeat.live_workers(client, settings.queue)
    except redis.RedisError as exc:
        return Check("workers", False, "redis unreachable", {"error": _short(exc)})
    workers = [
        {"name": b.name, "age_s": round(b.age_s, 1), "facts": _masked_facts(b.facts)} for b in beats
    ]
    detail = {"count": len(workers), "workers": workers}
    if not workers:
        reason = f"no worker consuming queue {settings.queue!r}"
        return Check("workers", False, reason, detail, warning=True)
    return Check("workers", True, "ok", detail)


def _masked_facts(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: mask_url(v) if isinstance(v, str) else v for k, v in facts.items()}


# --- `triage serve`: /readyz and /v1/status ----------------------------------------------------


class Readiness:
    """The checks of a running `serve`, bounded: their own few threads, a timeout per check,
    one round at a time, the answer kept for ``cache_s``."""

    OPEN = ("redis", "database", "embedder")

    def __init__(
        self, settings: Settings, *, timeout_s: float = CHECK_TIMEOUT_S, cache_s: float = 2.0
    ) -> None:
        self.settings, self.timeout_s, self.cache_s = settings, timeout_s, cache_s
        self.client = redis_client(settings, timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=5, thread_name_prefix="triage-ready")
        self._running: dict[str, Future[Check]] = {}
        self._cached: tuple[float, dict[str, Check]] | None = None
        self._round: asyncio.Task[dict[str, Check]] | None = None
        self._checks: dict[str, Callable[[], Check]] = {
            "redis": lambda: check_redis(self.client, settings),
            "database": lambda: check_database(settings, timeout_s),
            "embedder": lambda: check_embedder_config(settings, timeout_s),
            "queue": lambda: check_queue(self.client, settings),
            "workers": lambda: check_workers(self.client, settings),
        }

    async def checks(self) -> dict[str, Check]:
        if self._cached and time.monotonic() - self._cached[0] < self.cache_s:
            return self._cached[1]
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._run_round())
        return await asyncio.shield(self._round)

    async def _run_round(self) -> dict[str, Check]:
        waiting: dict[str, asyncio.Future[Check]] = {}
        for name, check in self._checks.items():
            running = self._running.get(name)
            if running is None or running.done():
                # A check still stuck from an earlier round is not started twice: the
                # executor's queue stays bounded whatever hangs.
                running = self._running[name] = self._executor.submit(check)
            waiting[name] = asyncio.wrap_future(running)
        await asyncio.wait(waiting.values(), timeout=self.timeout_s)
        results = {}
        for name, future in waiting.items():
            if future.done() and future.exception() is None:
                results[name] = future.result()
            else:
                if future.done():
                    logger.warning("readiness check %s failed: %s", name, future.exception())
                results[name] = Check(
                    name,
                    False,
                    _NOT_ANSWERING[name],
                    {"error": f"no answer within {self.timeout_s:g} s"},
                )
        self._cached = (time.monotonic(), results)
        return results

    async def open_answer(self) -> tuple[bool, str]:
        """``/readyz``: ready or not, and the first reason why not."""
        checks = await self.checks()
        for name in self.OPEN:
            if not checks[name].ok:
                return False, checks[name].reason
        return True, "ok"

    async def status(self) -> dict[str, Any]:
        """``/v1/status``: every check with its detail."""
        checks = await self.checks()
        ready, reason = await self.open_answer()
        return {
            "ready": ready,
            "reason": reason,
            "checks": {name: c.as_dict() for name, c in checks.items()},
        }

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.client.close()


_NOT_ANSWERING = {
    "redis": "redis unreachable",
    "database": "database unreachable",
    "embedder": "embedder unreachable",
    "queue": "redis unreachable",
    "workers": "redis unreachable",
}


# --- `triage doctor` ------------------------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def doctor_checks(settings: Settings) -> Iterator[Check]:
    """The serve checks with a longer patience, the versions, the model loaded for real and
    the Chroma store. Creates nothing: a missing database or store is reported, not made."""
    yield Check(
        "python",
        True,
        f"{platform.python_version()}; celery {_version('celery')}, chromadb "
        f"{_version('chromadb')}, sqlalchemy {_version('sqlalchemy')}, onnxruntime "
        f"{_version('onnxruntime')}",
    )
    client = redis_client(settings, timeout_s=3)
    found = check_redis(client, settings)
    yield found
    if found.ok:
        yield check_queue(client, settings)
        yield check_workers(client, settings)
    database = check_database(settings, timeout_s=5)
    yield database

    try:
        embedder = make_embedder(settings)
        embedder.check()
        described = ", ".join(f"{k} {v}" for k, v in embedder.describe().items())
    except Exception as exc:
        yield Check("embedder", False, f"{settings.embedder}: {_short(exc)}")
        return
    yield Check("embedder", True, described)
    yield from model_checks(settings, embedder)
    if not database.ok:
        yield Check("chroma", False, "not checked: the database is not ready")
        return
    yield _check_chroma(settings, embedder)


def model_checks(settings: Settings, embedder: Any) -> Iterator[Check]:
    """The thresholds the worker will route by and the language guard's rule, as the worker
    decides them for this model (worker/runtime.py): a thresholds file calibrated for another
    model is refused there, so it is BAD here; thresholds not calibrated for the model, and
    the guard off for a model nobody measured, are warnings."""
    advice = model_advice(settings, embedder)
    if settings.thresholds_file is not None:
        try:
            table = load_for_model(settings.thresholds_file, embedder.model_id)
        except (OSError, ValueError) as exc:
            yield Check("thresholds", False, _short(exc))
        else:
            yield Check(
                "thresholds",
                True,
                f"duplicate ≥ {table.default.duplicate}, suggest ≥ {table.default.suggest}, "
                f"{len(table.queues)} queue(s) of their own (from {settings.thresholds_file})",
            )
    else:
        line = (
            f"duplicate ≥ {advice.thresholds.duplicate}, suggest ≥ "
            f"{advice.thresholds.suggest} ({advice.source})"
        )
        calibrated = advice.calibrated
        yield Check(
            "thresholds",
            calibrated,
            line if calibrated else f"{line}: {'; '.join(advice.notes)}",
            warning=not calibrated,
        )
    guard = CoverageGuard.for_embedder(embedder, settings)
    if guard is not None:
        yield Check(
            "guard",
            True,
            f"language-coverage guard on: {embedder.model_id} reads English only; a ticket "
            f"with more than {settings.max_unknown_ratio:.0%} of its tokens unknown to it is "
            "routed manual",
        )
    elif advice.guard_note is not None:
        yield Check("guard", False, advice.guard_note, warning=True)
    else:
        yield Check(
            "guard", True, f"language-coverage guard off: {embedder.model_id} is multilingual"
        )


def _check_chroma(settings: Settings, embedder: Any) -> Check:
    if not settings.uses_chroma_server and not Path(settings.chroma_path).exists():
        return Check(
            "chroma", True, f"{settings.chroma_path}: no store yet (the first worker creates it)"
        )
    engine = make_engine(settings.database_url)
    try:
        with opened_store(settings, embedder, active_collection(engine, settings)) as store:
            return Check("chroma", True, ", ".join(f"{k} {v}" for k, v in store.describe().items()))
    except StoreLocked as exc:
        # A running worker owns the embedded store: that is the healthy state.
        owner = str(exc).split("(")[1].split(")")[0] if "(" in str(exc) else "a worker"
        return Check("chroma", True, f"{settings.chroma_path}: owned by a running worker ({owner})")
    except ModelMismatch as exc:
        # The remedy first: the mismatch itself is long and the line is cut at 300 characters.
        return Check("chroma", False, f"needs `triage reindex` for this model: {_short(exc)}")
    except TriageError as exc:
        return Check("chroma", False, _short(exc))
    finally:
        engine.dispose()


_DOCTOR_ONLY = ("python", "embedder", "thresholds", "guard", "chroma")


def doctor_line(check: Check) -> str:
    """One line of `triage doctor` for a check."""
    detail = check.reason if check.name in _DOCTOR_ONLY else _doctor_detail(check)
    tag = "ok " if check.ok else ("WARNING" if check.warning else "BAD")
    return f"{tag:<7}  {check.name:<10} {detail}"


def _doctor_detail(check: Check) -> str:
    d = check.detail
    if check.name == "redis":
        if not check.ok:
            return f"{d['url']}: {check.reason} ({d.get('error', '')})"
        master = f", master {d['master']} (Sentinel)" if "master" in d else ""
        return f"{d['url']}: redis {d['version']}{master}"
    if check.name == "queue":
        if not check.ok:
            return check.reason
        return f"queue {d['name']!r} holds {d['waiting']} waiting, {d['unacked']} unacked"
    if check.name == "workers":
        if not check.ok:
            return check.reason + (
                " (start one with `triage worker`)" if check.warning else f" ({d.get('error')})"
            )
        names = ", ".join(f"{w['name']} ({w['age_s']:.0f} s ago)" for w in d["workers"])
        return f"{d['count']} live: {names}"
    if check.name == "database":
        schema = f"schema {d.get('schema') or 'none'}/{d['expected']}"
        version = f"{d['version']}, " if "version" in d else ""
        error = f" ({d['error']})" if "error" in d else ""
        suffix = "" if check.ok else f": {check.reason}{error}"
        return f"{d['url']}: {version}{schema}{suffix}"
    return check.reason
