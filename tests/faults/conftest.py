"""Fixtures of the fault suite: one private Redis, Chroma server, PostgreSQL database and fake
Ollama per test, and a builder for the worker's settings pointing at them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from config.celery_app import create_app
from config.settings import Settings, load_settings
from tests.conftest import WorkerProcess, _create_pg_database
from tests.faults.harness import (
    ChromaServer,
    PrivateRedis,
    Tally,
    TcpProxy,
    missing,
    tally,
    wait_settled,
    wait_until,
)
from tests.ollama_fake import FakeOllama
from tickets import db, migrate
from tickets.ledger import Ledger
from tickets.model import Ticket, TicketKey
from tickets.queue import publish

StartWorker = Callable[..., WorkerProcess]
# Where sitecustomize.py wraps a worker's runtime with decision-section hooks.
HOOKS = Path(__file__).resolve().parent.parent / "hooks"


@dataclass
class FaultEnv:
    """The services of one fault test. ``settings()`` builds a worker's settings on them."""

    tmp_path: Path
    redis: PrivateRedis
    chroma: ChromaServer
    pg_url: str
    engine: Engine
    ollama: FakeOllama
    queue: str = field(default_factory=lambda: f"faults-{uuid.uuid4().hex[:8]}")
    proxies: list[TcpProxy] = field(default_factory=list)

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "redis_url": self.redis.url,
            "database_url": self.pg_url,
            "chroma_url": self.chroma.url,
            "chroma_path": self.tmp_path / "chroma-embedded",
            "embedder": "ollama",
            "ollama_url": self.ollama.url,
            "queue": self.queue,
            "batch_size": 16,
            "batch_wait_ms": 100,
            # Short enough that a killed worker's tickets come back within seconds; the
            # backoff cap must stay below it (settings check).
            "visibility_timeout_s": 8,
            "unacked_restore_interval_s": 1,
            "retry_backoff_max_s": 4,
            "max_retries": 10,
            # The ledger sweep re-sends a ticket lost in kombu's fetch window: look every
            # 2 s at tickets silent for 3 visibility timeouts (a batch here takes < 1 s).
            "ledger_sweep_s": 2,
            "ledger_silence_s": 24,
            "log_level": "INFO",
        }
        base.update(overrides)
        return load_settings(**base)

    def hooks(self, **points: dict[str, str]) -> dict[str, str]:
        """The environment of a worker that acts at decision-section hook points, e.g.
        ``hooks(after_commit={"ticket": "K", "action": "kill"})`` (tests/hooks/)."""
        return {
            "PYTHONPATH": str(HOOKS),
            "SECTION_HOOKS": json.dumps({"redis": self.redis.url, **points}),
        }

    def wait_hook(self, point: str, timeout: float = 60) -> None:
        """Until a worker paused at ``point``."""
        client = self.redis.client()
        try:
            wait_until(lambda: client.exists(f"hook:{point}:reached") == 1, timeout, point)
        finally:
            client.close()

    def release_hook(self, point: str) -> None:
        client = self.redis.client()
        try:
            client.set(f"hook:{point}:go", "1")
        finally:
            client.close()

    def proxy(self, target_port: int) -> TcpProxy:
        p = TcpProxy(target_port)
        self.proxies.append(p)
        return p

    def publish(
        self, settings: Settings, tickets: list[Ticket], per_message: int = 1
    ) -> list[TicketKey]:
        app = create_app(settings)
        try:
            ledger = Ledger(redis.Redis.from_url(settings.redis_url), settings.queue)
            sent = [t.key for t in publish(app, tickets, per_message=per_message, ledger=ledger)]
        finally:
            app.close()
        assert len(sent) == len(tickets)
        return sent

    def redis_state(self) -> dict[str, Any]:
        """Broker keys, sizes and TTLs: what a stalled recovery is waiting for."""
        client = self.redis.client()
        try:
            state: dict[str, Any] = {}
            for key in client.keys("*"):
                kind = client.type(key).decode()
                size = {"list": client.llen, "hash": client.hlen, "zset": client.zcard}.get(kind)
                state[key.decode(errors="replace")] = (
                    kind,
                    size(key) if size else None,
                    client.ttl(key),
                )
            return state
        finally:
            client.close()

    def recover(
        self, sent: list[TicketKey], fault_end: float, bound_s: float
    ) -> tuple[Tally, float]:
        """Wait until every sent ticket has its row, or the broker has been empty for longer
        than the visibility timeout (a missing ticket then never comes); count. The wait
        runs a minute past the bound, so a slow recovery is measured, then refused."""
        called = time.monotonic()
        settled_s = wait_settled(
            self.engine, sent, self.queue_depth, VISIBILITY_TIMEOUT_MAX_S + 5, bound_s + 60
        )
        # Until the last ticket got its row (which is now, unless some never come).
        recovery_s = called + settled_s - fault_end
        wait_until(lambda: self.queue_depth() == 0, 60, "the queue to drain")
        return tally(self.engine, sent), recovery_s

    def queue_depth(self) -> int:
        """Messages waiting in the queue plus those a worker holds unacked, plus tickets the
        ledger still expects (a ticket lost in transit is waiting for the sweep)."""
        client = self.redis.client()
        try:
            return (
                int(client.llen(self.queue))
                + int(client.hlen("unacked"))
                + int(client.zcard(f"triage:ledger:{self.queue}"))
            )
        finally:
            client.close()


@pytest.fixture
def fault_env(
    tmp_path: Path, postgres_server: str, request: pytest.FixtureRequest
) -> Iterator[FaultEnv]:
    url, drop = _create_pg_database(postgres_server)
    engine = db.make_engine(url)
    migrate.upgrade(engine)
    private_redis = PrivateRedis(tmp_path / "redis")
    chroma = ChromaServer(tmp_path)
    fake = FakeOllama(ignore_truncate=True)
    env = FaultEnv(tmp_path, private_redis, chroma, url, engine, fake)
    try:
        yield env
    finally:
        for p in env.proxies:
            p.close()
        fake.close()
        chroma.stop()
        private_redis.stop()
        engine.dispose()
        drop()


class Supervisor:
    """A restart policy, as docker-compose and Kubernetes give the worker: start it again
    when it exits, and count the restarts (a broker outage must need none: config/broker.py)."""

    def __init__(self, start: StartWorker, settings: Settings) -> None:
        self.workers = [start(settings)]
        self._start, self._settings = start, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def restarts(self) -> int:
        return len(self.workers) - 1

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self.workers[-1].proc.poll() is not None:
                self.workers.append(self._start(self._settings, ready=False))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def kill_through(
        self,
        n_kills: int,
        progress: Callable[[], int],
        step: int,
        outage: tuple[Callable[[], None], Callable[[], None], float],
    ) -> tuple[int, int]:
        """SIGKILL the current worker ``n_kills`` times, the first across an outage of the
        receiver (``down()``, half of ``down_s``, the kill, the other half, ``up()``), the
        others each after ``step`` more deliveries (``progress()`` counts them) and mid-request
        (the receiver answers slowly). Each kill waits for the restarted worker to be ready.
        Returns (kills, kills mid-delivery)."""
        down, up, down_s = outage
        in_flight = 0
        for k in range(n_kills):
            if k == 0:
                down()
                time.sleep(down_s / 2)
            else:
                seen = progress() + step
                wait_until(lambda s=seen: progress() > s, 120, "deliveries flowing")
                time.sleep(0.05)  # mid-request: the receiver takes 0.25 s to answer
                in_flight += 1
            worker = self.workers[-1]
            worker.proc.kill()
            worker.proc.wait(10)
            print(f"kill {k + 1}: {progress()} delivered at the kill")
            wait_until(lambda w=worker: self.workers[-1] is not w, 30, "a restart")
            self.workers[-1].wait_ready(90)
            if k == 0:
                time.sleep(down_s / 2)
                up()
        return n_kills, in_flight


@pytest.fixture
def supervise(start_worker: StartWorker) -> Iterator[Callable[[Settings], Supervisor]]:
    """Supervisors stopped before start_worker's teardown stops their workers."""
    started: list[Supervisor] = []

    def make(settings: Settings) -> Supervisor:
        started.append(Supervisor(start_worker, settings))
        return started[-1]

    yield make
    for s in started:
        s.stop()


# The longest visibility timeout these tests use: a broker empty for longer holds nothing more.
VISIBILITY_TIMEOUT_MAX_S = 30


def assert_nothing_lost(
    result: Tally, env: FaultEnv, sent: list[TicketKey], workers: list[WorkerProcess]
) -> None:
    """Nothing may be lost. kombu takes a message with BRPOP and records it as unacked in a
    second command; a worker or a Redis killed, or a connection cut, between the two used to
    lose that message (1 in ~2,000 under repeated SIGKILLs). The ledger sweep
    (tickets/ledger.py) now publishes such a ticket again, so a loss of either kind fails."""
    if not result.lost:
        return
    lost = missing(env.engine, sent)
    seen = [k for k in lost if any(f"{k.as_id()}:" in w.log() for w in workers)]
    raise AssertionError(
        f"{len(lost)} ticket(s) lost ({len(seen)} after a worker received them): {lost}; "
        f"ledger entries left: {env.queue_depth()}"
    )


def unchanged_redeliveries(workers: list[WorkerProcess]) -> int:
    """Tasks that found their ticket already decided: redeliveries absorbed, not re-decided."""
    return sum(w.log().count(": 'unchanged'") for w in workers)
