"""The decision fence on SQLite and PostgreSQL: a stale holder cannot commit, and on
PostgreSQL a new holder waits for the commit in progress (tests/faults/test_decision_lock.py
runs the whole story with two worker processes)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
import redis
from sqlalchemy.orm import Session

from tickets import db
from tickets.errors import LockTimeout
from worker.decision_lock import DecisionLock, DecisionLockLost, Fence


def test_a_stale_token_cannot_commit(database_url: str) -> None:
    engine = db.make_engine(database_url)
    fence = Fence(engine, "test", wait_s=2)
    first, second = fence.claim(), fence.claim()
    assert (first, second) == (1, 2)
    with (
        pytest.raises(DecisionLockLost, match="later holder"),
        fence.committing(first) as check,
        Session(engine) as session,
    ):
        check(session)
    with fence.committing(second) as check, Session(engine) as session:
        check(session)
        session.commit()
    # Another lock's fence is its own row.
    assert Fence(engine, "other").claim() == 1
    engine.dispose()


def test_a_new_holder_waits_for_the_commit_in_progress(postgres_server: str) -> None:
    from tests.conftest import _create_pg_database
    from tickets import migrate

    url, drop = _create_pg_database(postgres_server)
    engine = db.make_engine(url)
    try:
        migrate.upgrade(engine)
        fence = Fence(engine, "test", wait_s=1)
        token = fence.claim()
        errors: list[BaseException] = []
        with fence.committing(token) as check, Session(engine) as session:
            check(session)  # the commit transaction's first statement
            # A later holder's claim waits while this commit runs...
            claimer = threading.Thread(target=lambda: _claim(fence, errors))
            claimer.start()
            claimer.join(10)
            session.commit()
        assert len(errors) == 1 and isinstance(errors[0], LockTimeout), errors
        # ... and goes through once it is over; this holder's next commit then fails.
        assert fence.claim() == token + 1
        with (
            pytest.raises(DecisionLockLost),
            fence.committing(token) as check,
            Session(engine) as session,
        ):
            check(session)
    finally:
        engine.dispose()
        drop()


def _claim(fence: Fence, errors: list[BaseException]) -> None:
    try:
        fence.claim()
    except BaseException as exc:
        errors.append(exc)


def test_the_lock_yields_a_fenced_section(redis_url: str, sqlite_url: str) -> None:
    engine = db.make_engine(sqlite_url)
    client = redis.Redis.from_url(redis_url)
    lock = DecisionLock(client, engine, f"test-{uuid.uuid4().hex[:8]}", ttl_s=2, wait_s=1)
    with lock() as section:
        assert client.exists(lock.key) == 1
        with pytest.raises(LockTimeout), lock():  # one holder at a time
            pass
        # Its lock expired and was taken by a later holder meanwhile (the fence claimed).
        lock.fence.claim()
        with (
            pytest.raises(DecisionLockLost),
            section.committing() as check,
            Session(engine) as session,
        ):
            check(session)
    assert client.exists(lock.key) == 0
    client.close()
    engine.dispose()


def test_scopes_hold_their_own_locks_at_once(redis_url: str, sqlite_url: str) -> None:
    from worker.decision_lock import ScopeLocks

    engine = db.make_engine(sqlite_url)
    client = redis.Redis.from_url(redis_url)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    locks = ScopeLocks(client, engine, f"{prefix}-global", ttl_s=2, wait_s=1)
    with locks(f"{prefix}-a") as a, locks(f"{prefix}-b") as b:
        assert client.exists(locks.get(f"{prefix}-a").key, locks.get(f"{prefix}-b").key) == 2
        with pytest.raises(LockTimeout), locks(f"{prefix}-a"):  # one holder per scope
            pass
        for section in (a, b):  # each fenced by its own row
            with section.committing() as check, Session(engine) as session:
                check(session)
                session.commit()
    client.close()
    engine.dispose()


def test_a_scoped_commit_waits_for_a_holder_of_the_shared_fence(postgres_server: str) -> None:
    """`triage reindex` holds the global fence row across its final catch-up and switch:
    a scope's commit, which holds that row FOR SHARE, waits for it, then goes through."""
    from tests.conftest import _create_pg_database
    from tickets import migrate

    url, drop = _create_pg_database(postgres_server)
    engine = db.make_engine(url)
    try:
        migrate.upgrade(engine)
        shared = Fence(engine, "global", wait_s=1)
        scoped = Fence(engine, "scope-a", wait_s=1, shares="global")
        token = scoped.claim()
        _commit(scoped, token, [])  # creates the shared row, shares it: no conflict
        switch = shared.claim()
        errors: list[BaseException] = []
        with shared.committing(switch) as check, Session(engine) as session:
            check(session)  # the switch's transaction holds the shared row
            committer = threading.Thread(target=lambda: _commit(scoped, token, errors))
            committer.start()
            committer.join(10)
            session.commit()
        assert len(errors) == 1 and isinstance(errors[0], LockTimeout), errors
        _commit(scoped, token, errors)  # the switch over: it goes through
        assert len(errors) == 1
    finally:
        engine.dispose()
        drop()


def _commit(fence: Fence, token: int, errors: list[BaseException]) -> None:
    try:
        with fence.committing(token) as check, Session(fence.engine) as session:
            check(session)
            session.commit()
    except BaseException as exc:
        errors.append(exc)


def test_a_waiter_is_told_each_time_another_holder_has_left(
    redis_url: str, sqlite_url: str
) -> None:
    engine = db.make_engine(sqlite_url)
    client = redis.Redis.from_url(redis_url)
    lock = DecisionLock(client, engine, f"test-{uuid.uuid4().hex[:8]}", ttl_s=5, wait_s=5)
    told: list[bytes | None] = []
    entered = threading.Event()
    asked: list[bytes] = []  # the waiter's looks at who holds the lock
    get = client.get
    client.get = lambda key: asked.append(key) or get(key)  # type: ignore[method-assign]

    def waiter() -> None:
        with lock(while_waiting=lambda: told.append(client.get(lock.key))):
            entered.set()

    with lock():  # the first holder
        thread = threading.Thread(target=waiter)
        thread.start()
        wait_for(lambda: len(asked) >= 2, "the waiter has seen this holder")
        assert told == [] and not entered.is_set()
        # The first holder leaves and the next one enters at once (its own token).
        client.set(lock.key, b"next-holder", px=5000)
        wait_for(lambda: told == [b"next-holder"], "told once")
    # Still held by "next-holder": the waiter waits, told nothing more, until it leaves.
    time.sleep(0.05)
    assert not entered.is_set() and told == [b"next-holder"]
    client.delete(lock.key)
    thread.join(5)
    assert entered.is_set() and told == [b"next-holder"]
    client.close()
    engine.dispose()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_the_fence_check_takes_the_commits_shared_lock_in_its_statement(
    postgres_url: str,
) -> None:
    """check(session, shared_lock=...): the purge lock is held shared from the check's one
    statement to the commit, and a purge's exclusive hold waits for it; a stale holder's
    check still fails."""
    from sqlalchemy import event, text

    from tickets import purge as purge_sql

    engine = db.make_engine(postgres_url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    fence = Fence(engine, "test", wait_s=1)
    token = fence.claim()

    def purge_can_lock() -> bool:
        with engine.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key})
            return bool(got.scalar())

    try:
        with Session(engine) as session:
            key = purge_sql.shared_lock(session)
            assert key is not None
            with fence.committing(token) as check:
                statements.clear()
                check(session, shared_lock=key)
                assert len(statements) == 1 and "pg_advisory_xact_lock_shared" in statements[0]
                assert not purge_can_lock()
                session.commit()
        assert purge_can_lock()
        fence.claim()
        with (
            pytest.raises(DecisionLockLost),
            Session(engine) as session,
            fence.committing(token) as check,
        ):
            check(session, shared_lock=key)
    finally:
        engine.dispose()


def test_a_waiter_enters_when_the_holder_releases_not_at_its_next_ask(
    redis_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder publishes its release; a waiter subscribed to it takes the lock at once
    instead of at its next ask (here 5 s apart, so only the wake-up can be this early)."""
    from worker import decision_lock

    monkeypatch.setattr(decision_lock, "LOCK_POLL_S", 5.0)
    engine = db.make_engine(sqlite_url)
    client = redis.Redis.from_url(redis_url)
    lock = DecisionLock(client, engine, f"test-{uuid.uuid4().hex[:8]}", ttl_s=10, wait_s=20)
    entered: list[float] = []

    def waiter() -> None:
        with lock(while_waiting=lambda: None):
            entered.append(time.monotonic())

    with lock():
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(1.0)  # the waiter has asked once and waits for the next release
    released = time.monotonic()
    thread.join(10)
    assert entered and entered[0] - released < 1.0, (entered, released)
    client.close()
    engine.dispose()


def test_a_release_wakes_the_first_waiter_only(
    redis_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiters take the lock in the order they began to wait, each woken by the release
    before it (not by a poll: here 5 s apart), one at a time; none is left in line."""
    from worker import decision_lock

    monkeypatch.setattr(decision_lock, "LOCK_POLL_S", 5.0)
    engine = db.make_engine(sqlite_url)
    client = redis.Redis.from_url(redis_url)
    lock = DecisionLock(client, engine, f"test-{uuid.uuid4().hex[:8]}", ttl_s=10, wait_s=30)
    order: list[tuple[str, float, float]] = []  # (waiter, entered, released)

    def waiter(name: str) -> None:
        with lock(while_waiting=lambda: None):
            entered = time.monotonic()
            time.sleep(0.3)
        order.append((name, entered, time.monotonic()))

    threads = []
    with lock():
        for name in "abc":
            threads.append(threading.Thread(target=waiter, args=(name,)))
            threads[-1].start()
            while client.zcard(lock.waiters) < len(threads):  # in line, in this order
                time.sleep(0.01)
        released = time.monotonic()
    for thread in threads:
        thread.join(20)
    assert [name for name, _, _ in order] == ["a", "b", "c"]
    before = [released] + [left for _, _, left in order[:-1]]
    assert all(
        entered - prior < 1.0 for (_, entered, _), prior in zip(order, before, strict=True)
    ), order
    assert client.zcard(lock.waiters) == 0
    client.close()
    engine.dispose()


def test_a_hand_off_goes_to_the_first_waiter_and_never_keeps_the_lock(
    redis_url: str, sqlite_url: str
) -> None:
    """What a holder hands reaches the first waiter only, while it waits, before the
    release's wake-up; a hand-off that fails (here its message cannot be made) is logged
    and the lock is released all the same."""
    engine = db.make_engine(sqlite_url)
    client = redis.Redis.from_url(redis_url)
    lock = DecisionLock(client, engine, f"test-{uuid.uuid4().hex[:8]}", ttl_s=10, wait_s=20)
    got: dict[str, list[bytes]] = {"a": [], "b": []}

    def waiter(name: str) -> None:
        with lock(handed=got[name].append):
            pass

    threads = []
    with lock() as section:
        for name in "ab":
            threads.append(threading.Thread(target=waiter, args=(name,)))
            threads[-1].start()
            while client.zcard(lock.waiters) < len(threads):
                time.sleep(0.01)
        section.hand(lambda: b"rows of the first holder")
    for thread in threads:
        thread.join(10)
    # "a" was handed the first holder's rows; "b", first in line while "a" held the lock,
    # was handed nothing (a handed nothing).
    assert got == {"a": [b"rows of the first holder"], "b": []}

    def broken() -> bytes:
        raise ValueError("cannot encode")

    started = time.monotonic()
    with lock() as section:
        client.zadd(lock.waiters, {"someone": time.time()})  # in line: the message is made
        section.hand(broken)
    with lock():  # released at once, not left to expire (10 s)
        assert time.monotonic() - started < 2
    assert client.zcard(lock.waiters) == 0
    client.close()
    engine.dispose()
