"""Flower for the Celery side: the worker emits the events Flower reads, and compose's
`flower` service watches the broker the worker and the producer use.

The event test runs a real `celery worker` process and listens on the broker exactly as
Flower does (a celery event receiver), while one real ticket is triaged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from config.celery_app import TICKET_TASK, celery_config, create_app
from config.settings import Settings
from tests.conftest import WorkerProcess, wait_for
from tests.test_compose import COMPOSE, _depends_on, _env
from tickets.model import Ticket
from tickets.queue import publish

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_celery_config_sends_the_events_flower_needs(
    make_settings: Callable[..., Settings],
) -> None:
    conf = celery_config(make_settings())
    assert conf["worker_send_task_events"] is True  # received / started / succeeded / failed
    assert conf["task_send_sent_event"] is True  # sent: Flower shows queued tasks too
    assert create_app(make_settings()).conf.worker_send_task_events is True


def test_compose_flower_watches_the_workers_broker() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    flower = services["flower"]
    broker = _env(flower)["CELERY_BROKER_URL"]
    assert broker == _env(services["worker"])["TRIAGE_REDIS_URL"]
    assert broker == _env(services["producer"])["TRIAGE_REDIS_URL"]
    assert _env(flower)["FLOWER_PORT"] == "5555"
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # it can revoke tasks: localhost only
    assert _depends_on(flower)["redis"] == "service_healthy"


def test_readme_says_how_to_run_flower() -> None:
    assert "pip install flower" in README
    assert "celery -A config.celery_app flower" in README
    assert "127.0.0.1:5555" in README


def test_a_real_worker_emits_task_events(
    worker_settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = worker_settings()
    app = create_app(settings)
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    ready = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        events.append(event)
        ready.set()

    def listen() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": on_event})
            receiver.should_stop = False

            def watch() -> None:
                stop.wait()
                receiver.should_stop = True

            threading.Thread(target=watch, daemon=True).start()
            receiver.capture(limit=None, timeout=None, wakeup=True)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        start_worker(settings)
        # the worker's heartbeats arrive every 2 s: once one is here, we are subscribed
        assert ready.wait(30), "no event at all from the worker"
        ticket = Ticket(source="flower", ticket_id="1", body="Printer is on fire", queue=None)
        list(publish(app, [ticket], queue=settings.queue))

        def seen(kind: str) -> bool:
            return any(e.get("type") == kind for e in events)

        wait_for(lambda: seen("task-succeeded"), 60, "the task-succeeded event")
    finally:
        stop.set()
        listener.join(10)
        app.close()
    kinds = {e["type"] for e in events}
    assert {"worker-online", "worker-heartbeat"} & kinds
    assert {"task-sent", "task-received", "task-started", "task-succeeded"} <= kinds
    received = next(e for e in events if e["type"] == "task-received")
    assert received["name"] == TICKET_TASK and received["uuid"].startswith("flower:1:")
    # Flower's task list shows the ticket key: it is the task id
    assert time.time() - received["timestamp"] < 120
