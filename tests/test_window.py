"""The match window (worker/window.py) in the triage domain: real embedder, real embedded
Chroma, SQLite and PostgreSQL; its clock injected, never slept on."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from config.celery_app import TICKETS_TASK, create_app
from config.settings import Settings
from tests import test_pipeline
from tests.conftest import WorkerProcess, decisions, n_rows, wait_for
from tests.test_pipeline import CRASH, CRASH2, SHIPPING, rows
from tickets import db
from tickets.model import Ticket, TicketKey
from worker.lexical import LexicalIndex
from worker.pipeline import SectionHooks, Services, WorkItem, triage_batch
from worker.window import WindowIndex

DAYS = 7


# The domain tests' fixtures (tests/test_pipeline.py): a real embedder, embedded Chroma,
# SQLite and PostgreSQL.
local_embedder = test_pipeline.local_embedder
services = test_pipeline.services


def aged(ticket_id: str, body: str, days: float, **extra: object) -> Ticket:
    received = datetime.now(UTC) - timedelta(days=days)
    return Ticket(source="test", ticket_id=ticket_id, body=body, received_at=received, **extra)  # type: ignore[arg-type]


def windowed(services: Services, *, hybrid: bool = False, days: float = DAYS) -> Services:
    window = WindowIndex(days, services.embedder.dimension)
    window.load(services.engine, services.store)
    return replace(services, window=window, lexical=LexicalIndex() if hybrid else None)


@pytest.mark.parametrize("hybrid", [False, True])
@pytest.mark.parametrize("window_on", [True, False])
def test_a_twin_received_before_the_window_is_not_offered(
    services: Services, hybrid: bool, window_on: bool
) -> None:
    run = (
        windowed(services, hybrid=hybrid)
        if window_on
        else replace(services, lexical=LexicalIndex() if hybrid else None)
    )
    triage_batch([WorkItem(aged("old", CRASH, days=30)), WorkItem(aged("s", SHIPPING, 1))], run)
    [new] = triage_batch([WorkItem(aged("new", CRASH2, days=0))], run)
    d = rows(services)["new"]
    if window_on:
        assert new.status == "manual"
        # Neither side offers it, not even as a shown match below the thresholds.
        assert "old" not in {m["ticket_id"] for m in d.matches}
        assert run.window is not None and TicketKey("test", "old") not in run.window
    else:
        assert new.status == "duplicate" and d.matched_ticket_id == "old"


@pytest.mark.parametrize("window_on", [True, False])
def test_a_batch_mate_received_before_the_window_is_not_offered(
    services: Services, window_on: bool
) -> None:
    # An old ticket routed in the same batch as its twin (a late import): the batch-mate is
    # compared in routing itself, and is only offered when it is inside the window.
    run = windowed(services) if window_on else services
    res = triage_batch(
        [WorkItem(aged("old", CRASH, days=DAYS + 5)), WorkItem(aged("new", CRASH2, days=0))], run
    )
    assert res[1].status == ("manual" if window_on else "duplicate")


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_twin_inside_the_window_is_found(services: Services, hybrid: bool) -> None:
    run = windowed(services, hybrid=hybrid)
    triage_batch([WorkItem(aged("recent", CRASH, days=DAYS - 1))], run)
    triage_batch([WorkItem(aged("old", CRASH, days=DAYS + 1))], run)
    [new] = triage_batch([WorkItem(aged("new", CRASH2, days=0))], run)
    assert new.status == "duplicate"
    d = rows(services)["new"]
    assert d.matched_ticket_id == "recent"
    assert {m["ticket_id"] for m in d.matches} == {"recent"}
    # The window's neighbour carries the same decision metadata the store would (once the
    # next snapshot has caught it up).
    assert run.window is not None
    run.window.refresh(services.engine, services.store, _id(services, "new"))
    [[first, *_]] = run.window.query(np.stack([_vector(services, "new")]), 3)
    assert first.key == TicketKey("test", "new") and first.route == "duplicate"
    assert first.canonical == TicketKey("test", "recent")


def _vector(services: Services, ticket_id: str) -> np.ndarray:
    with Session(services.engine) as s:
        row = s.get(db.TicketRow, _id(services, ticket_id))
        assert row is not None and row.vector is not None
        return np.frombuffer(row.vector, dtype="<f4")


def _id(services: Services, ticket_id: str) -> int:
    with Session(services.engine) as s:
        found = s.query(db.TicketRow.id).filter(db.TicketRow.ticket_id == ticket_id).scalar()
        return int(found)


@pytest.mark.parametrize("received_days", [DAYS + 3, 1])
def test_the_section_catch_up_respects_the_window(services: Services, received_days: float) -> None:
    # Another worker commits a twin between this batch's snapshot and its section: the
    # catch-up reads it from SQL; it is offered only if received inside the window.
    other = replace(services, local_lock=threading.Lock(), hooks=SectionHooks())
    committed: list[str] = []

    def commit_twin(keys: list[TicketKey]) -> None:
        if not committed:
            committed.append("twin")
            triage_batch([WorkItem(aged("twin", CRASH, days=received_days))], other)

    run = replace(windowed(services), hooks=SectionHooks(after_snapshot=commit_twin))
    [new] = triage_batch([WorkItem(aged("new", CRASH2, days=0))], run)
    assert committed == ["twin"]
    assert run.window is not None and TicketKey("test", "twin") not in run.window  # caught up
    d = rows(services)["new"]
    if received_days > DAYS:
        assert new.status == "manual"
        assert "twin" not in {m["ticket_id"] for m in d.matches}
    else:
        assert new.status == "duplicate" and d.matched_ticket_id == "twin"


def test_the_window_evicts_tickets_as_time_passes(services: Services) -> None:
    run = windowed(services)
    triage_batch([WorkItem(aged("a", CRASH, days=1)), WorkItem(aged("b", SHIPPING, days=5))], run)
    window = run.window
    assert window is not None
    with Session(services.engine) as s:
        newest = db.newest_ticket_id(s)
    now = datetime.now(UTC)
    window.refresh(services.engine, services.store, newest, now=now)
    assert {TicketKey("test", "a"), TicketKey("test", "b")} <= set(window.keys)
    query = np.stack([_vector(services, "b")])
    assert window.query(query, 1)[0][0].key == TicketKey("test", "b")
    # Three days later "b" (received five days ago) has left the 7-day window, "a" not yet.
    later = now + timedelta(days=3)
    assert window.evict(later) == 1
    assert TicketKey("test", "b") not in window and TicketKey("test", "a") in window
    assert [nb.key for nb in window.query(query, 5)[0]] == [TicketKey("test", "a")]
    # A catch-up at that time evicts too, and never reads an expired ticket back.
    fresh = WindowIndex(DAYS, services.embedder.dimension)
    fresh.load(services.engine, services.store, now=later)
    assert set(fresh.keys) == {TicketKey("test", "a")}
    assert fresh.refresh(services.engine, services.store, newest, now=now + timedelta(days=9)) == 0
    assert len(fresh) == 0 and len(window) == 1


def test_a_started_worker_loads_the_window_from_sql(services: Services) -> None:
    # History decided by an earlier process (no window), one row without a kept vector (a
    # ticket stored before vectors were kept in SQL): a new process's window holds the
    # in-window tickets from SQL, that one from the store, and routes on them.
    triage_batch(
        [
            WorkItem(aged("recent", CRASH, days=2)),
            WorkItem(aged("kept-in-store", SHIPPING, days=3)),
            WorkItem(aged("old", REFUND_TEXT, days=DAYS + 2)),
        ],
        services,
    )
    with Session(services.engine) as s:
        s.execute(
            update(db.TicketRow)
            .where(db.TicketRow.ticket_id == "kept-in-store")
            .values(vector=None)
        )
        s.commit()
    window = WindowIndex(DAYS, services.embedder.dimension)
    assert window.load(services.engine, services.store) == 2
    assert set(window.keys) == {TicketKey("test", "recent"), TicketKey("test", "kept-in-store")}
    assert window.nbytes == 2 * services.embedder.dimension * 4
    held = window.query(np.stack([_vector(services, "recent")]), 1)[0][0]
    assert held.key == TicketKey("test", "recent") and held.score == pytest.approx(1.0, abs=1e-5)
    run = replace(services, window=window)
    [new] = triage_batch([WorkItem(aged("new", CRASH2, days=0))], run)
    assert new.status == "duplicate" and rows(services)["new"].matched_ticket_id == "recent"
    [other] = triage_batch([WorkItem(aged("again", REFUND_TEXT, days=0))], run)
    assert other.status == "manual"


REFUND_TEXT = (
    "I was charged twice for my March invoice and would like a refund of the second charge."
)


def test_a_worker_process_started_on_history_routes_within_the_window(
    worker_settings: Callable[..., Settings],
    sqlite_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # A first worker (window off) decides the history; a worker started later with the
    # window on fills it from SQL at start and routes on it.
    def send(settings: Settings, *tickets: Ticket) -> None:
        messages = [t.to_message() for t in tickets]
        create_app(settings).send_task(TICKETS_TASK, args=[messages, "route"], queue=queue_name)

    first = worker_settings()
    worker = start_worker(first)
    send(first, aged("recent", CRASH, days=2), aged("old", REFUND_TEXT, days=DAYS + 3))
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 2, 60, "the history's decisions")
    worker.stop()

    windowed_settings = worker_settings(match_window_days=DAYS)
    start_worker(windowed_settings)
    send(windowed_settings, aged("new", CRASH2, days=0), aged("again", REFUND_TEXT, days=0))
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 4, 60, "the new decisions")
    d = decisions(sqlite_url)
    assert d["new"].route == "duplicate" and d["new"].matched_ticket_id == "recent"
    assert d["again"].route == "manual"
    assert "old" not in {m["ticket_id"] for m in d["again"].matches}


def test_a_scoped_window_ranks_within_the_scope_only() -> None:
    # TRIAGE_MATCH_SCOPE=queue with a window: the nearest ticket of another queue is never
    # offered, even when it is the closest of all.
    window = WindowIndex(DAYS, 3, scope_field="queue")
    now = datetime.now(UTC)
    unit = np.eye(3, dtype=np.float32)
    for name, vector, queue in (
        ("a", unit[0], "alpha"),
        ("b", unit[1], "alpha"),
        ("c", unit[0], "beta"),
    ):
        key = TicketKey("test", name)
        window.add(key, vector, now, key, "manual", scope=queue)
    [[first, second]] = window.query(unit[:1], 5, "alpha")
    assert (first.key.ticket_id, second.key.ticket_id) == ("a", "b")
    assert first.score == pytest.approx(1.0) and second.score == pytest.approx(0.0)
    assert [nb.key.ticket_id for nb in window.query(unit[:1], 5, "beta")[0]] == ["c"]
    assert window.query(unit[:1], 5, None) == [[]]  # no ticket without a queue


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_queue_scoped_window_offers_the_queues_in_window_tickets_only(
    services: Services, hybrid: bool
) -> None:
    # TRIAGE_MATCH_SCOPE=queue with a window: each scope catches its window up on its own
    # (scopes commit out of id order); a twin is offered only from the same queue and
    # inside the window.
    window = WindowIndex(DAYS, services.embedder.dimension, scope_field="queue")
    window.load(services.engine, services.store)
    run = replace(
        services,
        match_scope="queue",
        scope_lock=lambda name, **_: contextlib.nullcontext(),
        lexical=LexicalIndex(scope_field="queue") if hybrid else None,
        window=window,
    )
    triage_batch(
        [
            WorkItem(aged("a-old", CRASH, days=DAYS + 2, queue="alpha")),
            WorkItem(aged("b-recent", CRASH, days=1, queue="beta")),
        ],
        run,
    )
    [alpha] = triage_batch([WorkItem(aged("a-new", CRASH2, days=0, queue="alpha"))], run)
    [beta] = triage_batch([WorkItem(aged("b-new", CRASH2, days=0, queue="beta"))], run)
    d = rows(services)
    assert alpha.status == "manual" and d["a-new"].matches == []
    assert beta.status == "duplicate" and d["b-new"].matched_ticket_id == "b-recent"
    assert {m["ticket_id"] for m in d["b-new"].matches} == {"b-recent"}
