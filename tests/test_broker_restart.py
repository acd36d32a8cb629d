"""A worker lives through Redis restarts under load (config/broker.py has the root cause).

A real worker consumes a private redis-server while tickets arrive steadily; the server is
stopped and started again on the same port, three times. The same worker process must go on
deciding, reconnect, and decide every ticket that was accepted exactly once. Before the
fix, kombu's close of the lost connection raised "AttributeError: 'NoneType' object has no
attribute 'hostname'" and the worker exited ("Unrecoverable error").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kombu.exceptions import KombuError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.celery_app import create_app
from config.settings import Settings
from tests.conftest import WorkerProcess, wait_for
from tests.faults.harness import PrivateRedis
from tickets import db
from tickets.heartbeat import live_workers
from tickets.ledger import Ledger
from tickets.model import Ticket, TicketKey
from tickets.queue import BrokerUnavailable, publish

RATE_PER_S = 30
RESTARTS = 3


class SteadyLoad:
    """Publishes one ticket per message at RATE_PER_S until stopped; keeps the keys the
    broker took (while Redis is down, publishing fails and nothing is accepted)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sent: list[TicketKey] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        app = create_app(self.settings)
        ledger = Ledger(redis.Redis.from_url(self.settings.redis_url), self.settings.queue)
        n = 0
        while not self._stop.wait(1 / RATE_PER_S):
            ticket = Ticket(
                source="restart", ticket_id=f"T{n:05d}", body=f"Problem {n}: the app is slow"
            )
            n += 1
            try:
                sent = publish(app, [ticket], ledger=ledger, retry_policy={"max_retries": 0})
                self.sent += [t.key for t in sent]
            except (BrokerUnavailable, KombuError):
                # KombuError: kombu's BatchPublishError ("delivery is uncertain") when the
                # connection dies mid-publish; the ledger entry covers such a ticket.
                self.refused += 1
        app.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _decided(url: str) -> dict[TicketKey, int]:
    engine = db.make_engine(url)
    with Session(engine) as s:
        rows = s.execute(
            select(db.DecisionRow.source, db.DecisionRow.ticket_id, func.count()).group_by(
                db.DecisionRow.source, db.DecisionRow.ticket_id
            )
        ).all()
    engine.dispose()
    return {TicketKey(a, b): int(n) for a, b, n in rows}


@pytest.mark.timeout(300)
def test_a_worker_goes_on_deciding_through_redis_restarts(
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = PrivateRedis(tmp_path / "redis")
    try:
        settings = make_settings(
            redis_url=server.url,
            database_url=sqlite_url,
            queue="restart",
            # Tickets wait for batch-mates, so the worker always holds unacked messages.
            batch_wait_ms=500,
            visibility_timeout_s=8,
            unacked_restore_interval_s=1,
            retry_backoff_max_s=4,
            ledger_sweep_s=2,
            ledger_silence_s=24,
        )
        worker = start_worker(settings)
        load = SteadyLoad(settings)
        client = server.client()
        for _ in range(RESTARTS):
            before = len(_decided(sqlite_url))
            wait_for(lambda b=before: len(_decided(sqlite_url)) > b + 30, 60, "progress")
            # A restart: the server shuts down (its AOF written) and comes back on its port.
            assert server.proc is not None
            server.proc.terminate()
            server.proc.wait(10)
            time.sleep(2)
            server.start()
            time.sleep(1)
            assert worker.proc.poll() is None, worker.log()[-5000:]
        # Deciding again after the last restart, then the load ends.
        before = len(_decided(sqlite_url))
        wait_for(lambda: len(_decided(sqlite_url)) > before + 30, 60, "progress")
        load.stop()

        sent = set(load.sent)
        wait_for(lambda: sent <= set(_decided(sqlite_url)), 120, "every accepted ticket")
        decided = _decided(sqlite_url)
        assert all(n == 1 for n in decided.values())
        assert worker.proc.poll() is None, "the worker exited"
        assert "Unrecoverable error" not in worker.log()
        assert worker.log().count("Connection to broker lost") >= RESTARTS
        assert len(sent) > 100 and load.refused > 0  # load went on during the outages
        [beat] = live_workers(client, settings.queue)
        assert beat.facts["pid"] == worker.proc.pid
        client.close()
    finally:
        server.stop()
