"""Fixtures of the fault suite: one private Redis, Chroma server, PostgreSQL database and fake
Ollama per test, and a builder for the worker's settings pointing at them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from config.celery_app import create_app
from config.settings import Settings, load_settings
from producer.enqueue import publish
from tests.conftest import WorkerProcess, _create_pg_database
from tests.faults.harness import (
    ChromaServer,
    PrivateRedis,
    Tally,
    TcpProxy,
    tally,
    wait_accounted,
    wait_until,
)
from tests.ollama_fake import FakeOllama
from worker import db, migrate
from worker.tickets import Ticket, TicketKey


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
            "log_level": "INFO",
        }
        base.update(overrides)
        return load_settings(**base)

    def proxy(self, target_port: int) -> TcpProxy:
        p = TcpProxy(target_port)
        self.proxies.append(p)
        return p

    def publish(self, settings: Settings, tickets: list[Ticket]) -> list[TicketKey]:
        app = create_app(settings)
        try:
            sent = [t.key for t in publish(app, tickets)]
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
        """Wait until every sent ticket has its row (a little past the bound, so a slow
        recovery is measured, then refused by the caller), let redeliveries drain, count."""
        try:
            wait_accounted(self.engine, sent, bound_s + 60, "recovery")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; {tally(self.engine, sent)}; broker: {self.redis_state()}"
            ) from None
        recovery_s = time.monotonic() - fault_end
        wait_until(lambda: self.queue_depth() == 0, 60, "the queue to drain")
        return tally(self.engine, sent), recovery_s

    def queue_depth(self) -> int:
        """Messages waiting in the queue plus those a worker holds unacked."""
        client = self.redis.client()
        try:
            return int(client.llen(self.queue)) + int(client.hlen("unacked"))
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


def unchanged_redeliveries(workers: list[WorkerProcess]) -> int:
    """Tasks that found their ticket already decided: redeliveries absorbed, not re-decided."""
    return sum(w.log().count(": 'unchanged'") for w in workers)


StartWorker = Callable[..., WorkerProcess]
