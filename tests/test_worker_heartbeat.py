"""A real worker process beats in Redis while it consumes its queue (worker/liveness.py), and
readers (tickets/heartbeat.py live_workers) see it come, go on a clean stop, and expire after
a SIGKILL."""

from __future__ import annotations

import signal
from collections.abc import Callable

import redis

from config.celery_app import create_app
from config.settings import Settings
from tests.conftest import WorkerProcess, wait_for
from tickets.heartbeat import HEARTBEAT_TTL_S, live_workers
from tickets.model import Ticket
from tickets.queue import publish


def test_a_worker_is_listed_while_it_runs_and_forgotten_when_it_stops(
    worker_settings: Callable[..., Settings],
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    redis_url: str,
) -> None:
    settings = worker_settings()
    client = redis.Redis.from_url(redis_url)
    assert live_workers(client, queue_name) == []

    worker = start_worker(settings)
    wait_for(lambda: len(live_workers(client, queue_name)) == 1, 30, "the worker's beat")
    [seen] = live_workers(client, queue_name)
    assert seen.facts["pid"] == worker.proc.pid and seen.facts["queue"] == queue_name
    assert seen.facts["model"] == "local:all-MiniLM-L6-v2" and seen.facts["started_at"]
    assert seen.facts["last_batch_at"] is None and seen.name.startswith("w")
    assert seen.age_s < HEARTBEAT_TTL_S

    # A batch decided: the next beats say when.
    app = create_app(settings)
    list(publish(app, [Ticket(source="beat", ticket_id="1", body="Printer is offline")]))
    app.close()
    wait_for(
        lambda: any(b.facts["last_batch_at"] for b in live_workers(client, queue_name)),
        30,
        "a beat with the last batch's time",
    )

    # A clean stop (SIGTERM, warm shutdown) forgets at once: no wait for the TTL.
    worker.stop()
    assert worker.proc.returncode == 0
    assert live_workers(client, queue_name) == []

    # A killed worker cannot forget: its beat lingers, then expires.
    killed = start_worker(settings)
    wait_for(lambda: len(live_workers(client, queue_name)) == 1, 30, "the second worker's beat")
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(10)
    assert [b.facts["pid"] for b in live_workers(client, queue_name)] == [killed.proc.pid]
    wait_for(lambda: live_workers(client, queue_name) == [], HEARTBEAT_TTL_S + 10, "expiry")
    client.close()
