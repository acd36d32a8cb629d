"""The hand-off between decision sections (worker/handoff.py): the holder gives the first
waiter the rows it is about to commit, and the waiter catches up with them while it waits.
Real Redis lock and fence, real embedder and embedded Chroma, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import fields, replace

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.test_pipeline import local_embedder, services  # noqa: F401  (fixtures)
from tickets import db
from tickets.model import Ticket, TicketKey
from worker import handoff, pipeline
from worker.decision_lock import DecisionLock
from worker.lexical import LexicalIndex
from worker.pipeline import ItemResult, SectionHooks, Services, WorkItem, triage_batch

HISTORY = [
    "How do I change the billing address on my account?",
    "The invoice PDF is blank when I download it.",
    "Please cancel my subscription at the end of the month.",
    "I cannot reset my password, the reset email never arrives.",
    "Your courier left my parcel at the wrong address.",
]
TWIN = "The printer driver fails to install on Windows 11 with error 0x80070005."
LATER = "Printer driver install fails on Windows 11: error 0x80070005"


@pytest.fixture
def hybrid(services: Services) -> Services:  # noqa: F811  (the fixture, asked for)
    """The pipeline tests' services (real embedder, embedded Chroma, each database), with
    hybrid ranking."""
    return replace(services, lexical=LexicalIndex(), hybrid_pool=3)


def t(i: str, body: str) -> Ticket:
    return Ticket(source="test", ticket_id=i, body=body)


def test_the_rows_handed_are_the_rows_read_back_once_committed(
    hybrid: Services, redis_url: str
) -> None:
    """What a holder hands (its rows as the next section reads them, through the message)
    equals what that section reads back after the commit, but for the ids; a row changed
    between the two (a text erased by a purge) does not."""
    triage_batch([WorkItem(t("h0", HISTORY[0]), mode="history")], hybrid)
    client = redis.Redis.from_url(redis_url)
    lock = DecisionLock(client, hybrid.engine, f"test-{uuid.uuid4().hex[:8]}")
    # A waiter in line, listening on its channel (as DecisionLock._acquire does).
    client.zadd(lock.waiters, {"w": time.time()})
    woken = client.pubsub(ignore_subscribe_messages=True)
    woken.subscribe(lock.wake("w"))
    triage_batch(
        [WorkItem(t("1", TWIN)), WorkItem(t("2", HISTORY[1] + " Again."))],
        replace(hybrid, lock=lock),
    )
    messages = []
    deadline = time.monotonic() + 2
    while len(messages) < 2 and time.monotonic() < deadline:
        if (m := woken.get_message(timeout=0.1)) is not None:
            messages.append(m["data"])
    woken.close()
    client.delete(lock.waiters)
    client.close()
    # What it was handed, then the release's wake-up (which takes it out of the line).
    assert len(messages) == 2 and messages[1] == b""
    data = messages[0]
    rows = handoff.decode(data)
    assert rows is not None and [r.key.ticket_id for r in rows] == ["1", "2"]
    with Session(hybrid.engine) as session:
        committed = db.stored_tickets(session, after_id=1)
    assert [c.key.ticket_id for c in committed] == ["1", "2"]
    assert handoff.same(rows, committed)
    assert rows[1].route == committed[1].route and rows[1].canonical == committed[1].canonical
    erased = [committed[0], replace(committed[1], body="")]
    assert not handoff.same(rows, erased)
    assert not handoff.same(rows, committed[:1])
    assert not handoff.same(rows[::-1], committed)
    assert handoff.decode(b"not json") is None and handoff.decode(data[:-1]) is None
    # Every field of a stored ticket but its id is compared (one added later too).
    assert len(handoff._comparable(rows[0])) == len(fields(db.StoredTicket)) - 1


def _in_line(
    hybrid: Services, redis_url: str, hooks: SectionHooks, monkeypatch: pytest.MonkeyPatch
) -> tuple[ItemResult | BaseException, bool]:
    """A holder (``A``, its ticket TWIN) and a waiter (``B``, its ticket LATER, TWIN's
    paraphrase) queue in that order behind a third holder; once it leaves, A decides with
    ``hooks`` and B after it. B's result and whether its section caught up inside."""
    from worker import decision_lock

    # Each enters when woken, in line (a poll could let B ask first between two holders).
    monkeypatch.setattr(decision_lock, "LOCK_POLL_S", 5.0)
    name = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    gate = DecisionLock(client, hybrid.engine, name)
    out: dict[str, ItemResult | BaseException] = {}
    inside: dict[str, bool] = {}

    def worker(label: str, ticket: Ticket, hooks_: SectionHooks) -> None:
        mine = replace(
            hybrid,
            lock=DecisionLock(client, hybrid.engine, name),
            hooks=hooks_,
            local_lock=threading.Lock(),
        )
        try:
            [out[label]] = triage_batch([WorkItem(ticket)], mine)
            inside[label] = pipeline.sections_caught_up()[-1]
        except Exception as exc:
            out[label] = exc

    threads = []
    with gate():
        for label, ticket, hooks_ in (("A", t("3", TWIN), hooks), ("B", t("4", LATER), None)):
            threads.append(
                threading.Thread(target=worker, args=(label, ticket, hooks_ or SectionHooks()))
            )
            threads[-1].start()
            deadline = time.monotonic() + 30
            while client.zcard(gate.waiters) < len(threads):  # in line, in this order
                assert time.monotonic() < deadline
                time.sleep(0.01)
    for thread in threads:
        thread.join(60)
    client.close()
    return out["B"], inside["B"]


def test_the_waiter_catches_up_with_what_the_holder_handed_while_it_waits(
    hybrid: Services, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B, first in line while A decides, is handed A's ticket before A's commit and routes
    on it while it waits; inside its section it finds exactly that ticket committed and
    writes what it worked out, catching up with nothing inside: a duplicate of A's
    ticket, as if caught up inside. (Before hand-offs, B caught up with A's ticket inside
    its section: A commits and leaves after B last asked.)"""
    triage_batch([WorkItem(t(f"h{n}", b), mode="history") for n, b in enumerate(HISTORY)], hybrid)
    b, inside = _in_line(hybrid, redis_url, SectionHooks(), monkeypatch)
    assert isinstance(b, ItemResult) and b.status == "duplicate" and b.outcome is not None
    assert b.outcome.canonical == TicketKey("test", "3")
    assert inside is False
    with Session(hybrid.engine) as session:
        row = session.scalars(select(db.DecisionRow).filter_by(ticket_id="4")).one()
    assert row.matched_ticket_id == "3"


def test_what_a_holder_handed_and_did_not_commit_is_not_taken(
    hybrid: Services, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hands its ticket, then fails before its commit: B finds nothing committed since
    its view and writes its plan, on which A's ticket never was (not a duplicate of it)."""
    triage_batch([WorkItem(t(f"h{n}", b), mode="history") for n, b in enumerate(HISTORY)], hybrid)

    def fail(_keys: list[TicketKey]) -> None:
        raise RuntimeError("the holder stops before its commit")

    b, inside = _in_line(hybrid, redis_url, SectionHooks(in_section=fail), monkeypatch)
    assert isinstance(b, ItemResult) and b.status == "manual"
    assert inside is False  # its view held
    with Session(hybrid.engine) as session:
        assert db.known_tickets(session, [TicketKey("test", "3")]) == {}
