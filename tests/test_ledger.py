"""The ledger of accepted tickets: a ticket lost in kombu's fetch window is published again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from config.celery_app import create_app
from config.settings import Settings
from tests.conftest import WorkerProcess, decisions, n_rows, wait_for
from tickets import db
from tickets.ledger import Ledger
from tickets.model import Ticket, TicketKey
from tickets.queue import publish
from worker.redrive import redrive


def tickets(*ids: str) -> list[Ticket]:
    return [
        Ticket(source="ledger", ticket_id=i, body=f"Ticket {i}: the export button is greyed out")
        for i in ids
    ]


class Republished:
    """A sweep's ``republish``: records what it was given (ids sorted, mode), sends nothing."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[str], str]] = []

    def __call__(self, batch: list[Ticket], mode: str) -> Iterator[Ticket]:
        self.sent.append((sorted(t.ticket_id for t in batch), mode))
        yield from batch


@pytest.fixture
def sweeping(worker_settings: Callable[..., Settings]) -> Settings:
    """Workers that sweep the ledger every second and count 3 s of silence as lost."""
    return worker_settings(ledger_sweep_s=1, ledger_silence_s=3)


@pytest.fixture
def producer(sweeping: Settings) -> Iterator[Celery]:
    app = create_app(sweeping)
    yield app
    app.close()


@pytest.fixture
def ledger(redis_url: str, queue_name: str) -> Iterator[Ledger]:
    client = redis.Redis.from_url(redis_url)
    yield Ledger(client, queue_name)
    client.close()


def test_record_touch_clear(ledger: Ledger) -> None:
    ledger.record(tickets("1", "2"), "route")
    assert ledger.size() == 2
    ledger.touch([TicketKey("ledger", "1"), TicketKey("ledger", "nobody")])
    assert ledger.size() == 2  # touching never creates an entry
    ledger.clear([TicketKey("ledger", "1")])
    assert ledger.size() == 1
    assert ledger.redis.hkeys(ledger.payloads) == [b"ledger:2"]


def test_sweep_clears_the_settled_and_republishes_the_lost(ledger: Ledger, sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    ledger.record(tickets("decided", "lost", "fresh"), "backfill")
    # "decided" got its row in SQL, but the worker's clear never reached Redis.
    with Session(engine) as session:
        row = db.ticket_values(tickets("decided")[0], content_hash="h", backfill=True, model="m")
        db.save_batch(session, [row], [])
        session.commit()
    ledger.touch([TicketKey("ledger", "fresh")])  # a worker holds it right now
    republish = Republished()

    ledger.redis.rpush(ledger.queue, b"a message still waiting")
    assert ledger.sweep(engine, republish, silent_for_s=0).skipped == "the queue is not empty"
    ledger.redis.delete(ledger.queue)

    # Recorded (or touched) just now: not silent for 5 s yet.
    result = ledger.sweep(engine, republish, silent_for_s=5, now=time.time() + 4)
    assert result.looked_at == 0 and republish.sent == []
    ledger.redis.zadd(ledger.times, {"ledger:fresh": time.time() + 3})  # touched 3 s later
    result = ledger.sweep(engine, republish, silent_for_s=5, now=time.time() + 6)
    assert (result.looked_at, result.resolved, result.republished) == (2, 1, 1)
    assert republish.sent == [(["lost"], "backfill")]  # the mode it was accepted with
    # Republished entries got a new sign of life: the next sweep does not send them again.
    again = ledger.sweep(engine, republish, silent_for_s=5, now=time.time() + 1)
    assert again.looked_at == 0 and len(republish.sent) == 1
    assert ledger.size() == 2
    engine.dispose()


def test_a_ticket_lost_in_transit_is_decided_after_the_sweep(
    sweeping: Settings,
    producer: Celery,
    sqlite_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    ledger: Ledger,
) -> None:
    settings, app = sweeping, producer
    list(publish(app, tickets("a", "b"), queue=queue_name, ledger=ledger))
    # What a worker killed between kombu's BRPOP and its unacked record does: the message
    # leaves the queue and is nowhere any more (kombu pops from the right end).
    assert ledger.redis.rpop(queue_name) is not None
    assert ledger.redis.llen(queue_name) == 1 and ledger.size() == 2
    started = datetime.now(UTC)
    worker = start_worker(settings)
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 2, 60, "both decisions")
    assert set(decisions(sqlite_url)) == {"a", "b"}
    wait_for(lambda: ledger.size() == 0, 10, "an empty ledger")
    assert "published again" in worker.log()
    assert (datetime.now(UTC) - started).total_seconds() < 45


def _fail(engine: Engine, ticket: Ticket, mode: str = "route") -> None:
    """The failure row a dead-lettered ticket leaves (what the worker writes)."""
    with Session(engine) as session:
        db.record_failure(
            session,
            key=ticket.key,
            error_type="EmbedderUnavailable",
            reason="the embedding service was down",
            attempts=11,
            payload=ticket.to_message(),
            mode=mode,
        )
        session.commit()


def test_sweep_settles_an_entry_by_what_it_asked_for(ledger: Ledger, sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    history, redriven, failed_again, stored = tickets("history", "redriven", "again", "stored")
    # "history" was stored as history, then sent for routing: its ticket row is no decision.
    # "redriven" failed, then `triage redrive` sent it: its failure row is older than that.
    # "stored" (history) got its ticket row; "again" failed after it was sent: both settled.
    with Session(engine) as session:
        rows = [
            db.ticket_values(t, content_hash="h", backfill=True, model="m")
            for t in (history, stored)
        ]
        db.save_batch(session, rows, [])
        session.commit()
    _fail(engine, redriven)
    time.sleep(0.01)
    ledger.record([history, redriven, failed_again], "route")
    ledger.record([stored], "backfill")
    time.sleep(0.01)
    _fail(engine, failed_again)
    republish = Republished()

    result = ledger.sweep(engine, republish, silent_for_s=0, now=time.time() + 1)
    assert (result.looked_at, result.resolved, result.republished) == (4, 2, 2)
    assert republish.sent == [(["history", "redriven"], "route")]
    assert sorted(ledger.redis.hkeys(ledger.payloads)) == [b"ledger:history", b"ledger:redriven"]
    engine.dispose()


def test_redriven_and_history_then_routed_tickets_lost_in_transit_are_decided(
    sweeping: Settings,
    producer: Celery,
    sqlite_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    ledger: Ledger,
) -> None:
    settings, app = sweeping, producer
    engine = db.make_engine(sqlite_url)
    history, failed = tickets("history", "failed")
    # History first, stored by a real worker; then that worker stops (it owns the store).
    first = start_worker(settings)
    list(publish(app, [history], mode="backfill", queue=queue_name, ledger=ledger))
    wait_for(lambda: n_rows(sqlite_url, db.TicketRow) == 1, 60, "the history row")
    first.stop()
    wait_for(lambda: ledger.size() == 0, 10, "an empty ledger")

    # A ticket that failed for good, re-driven; and the history ticket, sent for routing.
    _fail(engine, failed)
    report = redrive(
        engine, lambda batch, mode: publish(app, batch, mode=mode, queue=queue_name, ledger=ledger)
    )
    assert report.count("published") == 1
    list(publish(app, [history], mode="route", queue=queue_name, ledger=ledger))
    # Both messages are lost in kombu's fetch window (see above).
    assert ledger.redis.rpop(queue_name) is not None
    assert ledger.redis.rpop(queue_name) is not None
    assert ledger.redis.llen(queue_name) == 0 and ledger.size() == 2

    worker = start_worker(settings)
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 2, 60, "both decisions")
    assert set(decisions(sqlite_url)) == {"history", "failed"}
    assert n_rows(sqlite_url, db.FailureRow) == 0
    wait_for(lambda: ledger.size() == 0, 10, "an empty ledger")
    assert "published again" in worker.log()
    engine.dispose()
