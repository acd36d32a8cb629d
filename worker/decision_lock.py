"""The decision lock: one critical section at a time across processes sharing a Chroma server.

Two parts, because a Redis lock alone cannot keep its promise. The Redis lock (renewed by
a thread while its holder lives, expiring ``ttl_s`` after a holder dies) lets one process
into the section at a time. But a live holder can lose it: paused longer than the TTL (a
stop signal, a long GC or swap pause, a VM migration) or cut off from Redis while its
renewals fail. It then still holds its view of what was decided, and would commit
decisions made on that stale view after the next holder has decided meanwhile: two
tickets that are each other's twin, both routed as originals. Checking "do I still hold
the Redis key?" just before the commit leaves a window between the check and the commit.

So the section is also fenced in SQL, where the decisions are written (the fencing-token
scheme of Kleppmann, "How to do distributed locking", 2016). On entry the holder claims
the fence: one row per lock in ``triage_decision_fence``, its token incremented and
committed before anything decided is read. Its commit then runs only while that row still
carries its token, checked inside the commit itself, so no later holder can claim between
the check and the commit: the commit transaction's first statement is a conditional UPDATE
of the fence row (``token = token`` where the token is still this holder's), which matches
no row once a later holder has claimed, and locks what a claim needs until the commit:

- PostgreSQL: the fence row, locked by the UPDATE until the transaction ends. A later
  holder's claim (an UPDATE of that row) waits for it, so every ticket an earlier holder
  wrote is committed once the claim returns; if it waits longer than the lock wait it gives
  its batch back (a transient error, retried). One connection, one transaction: the check
  costs one statement of the commit.
- SQLite (several processes on one file): the UPDATE takes SQLite's write lock until the
  commit.

The vectors reach the store after the commit, outside the section (worker/pipeline.py):
the next holder finds the tickets committed since its snapshot in SQL, vectors included.

A holder whose token was taken raises :class:`DecisionLockLost` (transient): nothing of its
batch was written, and the batch is retried on a fresh view.

Match scopes (TRIAGE_MATCH_SCOPE=queue or source) each take a lock and fence row of their
own (:class:`ScopeLocks`), so scopes decide in parallel. `triage reindex` still takes the
global one, and its switch-over must also exclude every scope's commit: a scope's commit
transaction holds the global fence row ``FOR SHARE`` (PostgreSQL), which the switch's own
commit transaction holds locked (its fence check) across its final catch-up; on SQLite
every commit takes the database's write lock. The token comes from the
claim itself (an increment in SQL, not a Redis counter), so it stays monotonic when Redis
restarts and loses its recent writes; the Redis lock only keeps sections from overlapping,
the fence keeps a stale one from committing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import redis
from redis.exceptions import LockError, RedisError
from redis.lock import Lock
from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from tickets import db
from tickets.errors import LockTimeout, StoreUnavailable, TransientError

logger = logging.getLogger(__name__)

# How long a process waits for the lock (and for a PostgreSQL fence row held by a holder
# finishing its commit) before it gives its batch back for a retry.
LOCK_WAIT_S = 30
# How long a process waiting for the Redis lock waits before it asks again, unless the
# holder's release wakes it first (redis-py's default is 0.1 s): the section takes
# milliseconds, so a waiter polling every 0.1 s would leave the lock idle for most of its
# wait. At this pace a few waiting workers cost Redis a few hundred SET NX per second.
LOCK_POLL_S = 0.005
# How long a holder leaving waits for its hand-off to the next waiter to be sent (it is
# made and sent while the holder commits, and takes a fraction of a millisecond).
HAND_WAIT_S = 0.5
# The critical section (query + decide + write) takes milliseconds; the TTL bounds how long
# the other workers wait after a holder dies (a fixed 60 s stalled every worker for a
# minute after a SIGKILL mid-section: tests/faults/test_kill.py).
DEFAULT_TTL_S = 10.0


class DecisionLockLost(TransientError):
    """Another process claimed the decision fence since this one did: nothing was written."""


class FenceCheck(Protocol):
    """Run inside the commit transaction, before its writes; raises DecisionLockLost.

    ``shared_lock``: a PostgreSQL advisory lock the commit holds shared until it ends (the
    purge lock, tickets/purge.py), taken by the same statement before the fence row: the
    commit's first round trip does both. None on SQLite, whose write lock is the
    database's."""

    def __call__(self, session: Session, *, shared_lock: int | None = None) -> None: ...


@dataclass
class Section:
    """One holder's stay in the critical section: its fence token and whether its Redis
    lock is known to be lost (renewal found another owner)."""

    fence: Fence
    token: int
    lost: threading.Event = field(default_factory=threading.Event)
    # Sends what the function makes to the first waiter, on a thread of the lock's
    # (:meth:`DecisionLock.hand`); None: nobody to hand to.
    handing: Callable[[Callable[[], bytes]], Future[int]] | None = None
    _handed: Future[int] | None = field(default=None, init=False, repr=False)

    def hand(self, make: Callable[[], bytes]) -> None:
        """Gives what ``make`` returns to the process that waits first for the lock, while
        this one still holds it (the rows about to be committed, worker/pipeline.py): it
        can work on them while it waits. Made and sent on another thread while this one
        goes on (its commit mostly waits for the database); sent before the release wakes
        that waiter. Best effort: the waiter checks what it was handed against what it
        finds committed."""
        if self.handing is not None:
            self._handed = self.handing(make)

    def settle(self, timeout: float) -> bool:
        """Waits for the hand-off, if any, to be sent; whether a waiter received it."""
        if self._handed is None:
            return False
        try:
            return self._handed.result(timeout) > 0
        except (RedisError, FutureTimeout) as exc:
            logger.debug("decision lock: nothing handed on (%s)", exc or "timed out")
        except Exception:
            # Never in the way of the release: the waiter catches up inside instead.
            logger.exception("decision lock: the hand-off failed")
        return False

    @contextlib.contextmanager
    def committing(self) -> Iterator[FenceCheck]:
        """Around the decision's SQL commit: raises DecisionLockLost if the Redis lock is
        known lost; yields the fence check to run first inside the commit transaction."""
        if self.lost.is_set():
            raise DecisionLockLost("the decision lock expired during the section (renewal failed)")
        with self.fence.committing(self.token) as check:
            yield check


class Fence:
    """The fence row of one lock in ``triage_decision_fence``. ``shares``: another lock's
    fence row that this one's commits hold ``FOR SHARE`` (a match scope's, the global one)."""

    def __init__(
        self, engine: Engine, name: str, *, wait_s: float = LOCK_WAIT_S, shares: str | None = None
    ) -> None:
        self.engine, self.name, self.wait_s = engine, name, wait_s
        self.shares = shares
        self._shared_row = False
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def _lock_timeout_ms(self) -> str:
        return f"{int(self.wait_s * 1000)}ms"

    @property
    def _postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def claim(self) -> int:
        """Take the next token, committed: every commit of an earlier holder after this
        fails. On PostgreSQL this waits (up to ``wait_s``) for an earlier holder that is
        committing, so its writes are all visible once the claim returns."""
        return self._claim(self.name)

    def _claim(self, name: str) -> int:
        table = db.DecisionFenceRow.__table__
        try:
            if self._postgres:
                # One statement in its own transaction: one round trip, where BEGIN,
                # set_config, the upsert and COMMIT would take four. The settings are
                # evaluated before the row is locked, and last until that transaction ends
                # (see _CLAIM).
                with self._autocommit.connect() as conn:
                    return int(
                        conn.execute(
                            _CLAIM,
                            {
                                "name": name,
                                "now": datetime.now(UTC),
                                "ms": self._lock_timeout_ms,
                                "sync": "off",
                            },
                        ).scalar_one()
                    )
            with self.engine.begin() as conn:
                insert = db.dialect_insert(conn.dialect.name)(table).values(
                    name=name, token=1, claimed_at=datetime.now(UTC)
                )
                stmt = insert.on_conflict_do_update(
                    index_elements=["name"],
                    set_={"token": table.c.token + 1, "claimed_at": insert.excluded.claimed_at},
                ).returning(table.c.token)
                return int(conn.execute(stmt).scalar_one())
        except DBAPIError as exc:
            if _lock_not_available(exc):
                raise LockTimeout(
                    f"decision fence {self.name!r}: an earlier holder is still committing after "
                    f"{self.wait_s:g} s"
                ) from exc
            raise StoreUnavailable(f"database error claiming the decision fence: {exc}") from exc
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"database error claiming the decision fence: {exc}") from exc

    @contextlib.contextmanager
    def committing(self, token: int) -> Iterator[FenceCheck]:
        """Yields the check to run first inside the commit transaction (raises
        DecisionLockLost if a later holder has claimed the fence)."""
        yield self._check_in_transaction(token)

    def _check_in_transaction(self, token: int) -> FenceCheck:
        def check(session: Session, *, shared_lock: int | None = None) -> None:
            row = db.DecisionFenceRow
            try:
                # The fence row stays locked by this transaction until it ends (on SQLite,
                # the database's write lock): a later holder's claim waits for the commit,
                # and a claim committed before makes this match no row.
                if self._postgres:
                    values = {"name": self.name, "token": token, "ms": self._lock_timeout_ms}
                    if shared_lock is None:
                        result = session.execute(_CHECK, values)
                    else:
                        result = session.execute(_CHECK_SHARED, values | {"shared": shared_lock})
                else:
                    result = session.execute(
                        update(row)
                        .where(row.name == self.name, row.token == token)
                        .values(token=row.token)
                        .execution_options(synchronize_session=False)
                    )
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    raise DecisionLockLost(
                        f"decision fence {self.name!r} claimed by a later holder (this "
                        f"section's token {token}): the batch is retried"
                    )
                if self.shares is not None and self._postgres:
                    self._share(session)
            except DBAPIError as exc:
                if _lock_not_available(exc):
                    raise LockTimeout(
                        f"decision fence {self.name!r} (or the shared {self.shares!r}): "
                        f"locked by another holder for longer than {self.wait_s:g} s"
                    ) from exc
                raise StoreUnavailable(
                    f"database error checking the decision fence: {exc}"
                ) from exc
            except SQLAlchemyError as exc:
                raise StoreUnavailable(
                    f"database error checking the decision fence: {exc}"
                ) from exc

        return check

    def _share(self, session: Session) -> None:
        """Hold the shared fence row FOR SHARE until this commit ends: a holder of the
        shared lock (a reindex's switch-over) waits for the commit, or this waits for it."""
        row = db.DecisionFenceRow
        if not self._shared_row:
            # The row must exist before it is locked: a row inserted while a commit runs
            # would leave that commit unexcluded.
            self._ensure(self.shares)  # type: ignore[arg-type]
            self._shared_row = True
        session.execute(select(row.token).where(row.name == self.shares).with_for_update(read=True))

    def _ensure(self, name: str) -> None:
        table = db.DecisionFenceRow.__table__
        with self.engine.begin() as conn:
            insert = db.dialect_insert(conn.dialect.name)(table).values(
                name=name, token=0, claimed_at=datetime.now(UTC)
            )
            conn.execute(insert.on_conflict_do_nothing(index_elements=["name"]))


# The claim on PostgreSQL (Fence._claim), bound parameters only. lock_timeout (set_config's
# third argument makes it SET LOCAL: this transaction only) bounds the wait for a fence row
# a committing holder keeps locked. synchronous_commit off: the claim's commit returns
# before its WAL reaches the disk (visible to every session at once, as any commit). A
# claim needs no flush of its own: the WAL is flushed in order, so the next decision commit
# (which waits for its flush) makes every claim before it durable, and a claim that a crash
# loses was followed by no durable decision, so the token it took back was never used.
_CLAIM = text(
    "INSERT INTO triage_decision_fence (name, token, claimed_at) "
    "SELECT :name, 1, :now FROM (SELECT set_config('lock_timeout', :ms, true), "
    "set_config('synchronous_commit', :sync, true)) AS settings "
    "ON CONFLICT (name) DO UPDATE SET token = triage_decision_fence.token + 1, "
    "claimed_at = excluded.claimed_at RETURNING token"
)


# The fence check on PostgreSQL, the commit transaction's first statement: the row is only
# locked once the one-row subquery has set lock_timeout for the rest of the transaction (so
# it also bounds the wait of the shared lock it takes, its FOR SHARE and the commit's other
# statements). A statement's snapshot is taken when it starts: what the shared lock keeps
# from committing is read by the statements after this one.
_CHECK = text(
    "UPDATE triage_decision_fence SET token = token "
    "FROM (SELECT set_config('lock_timeout', :ms, true)) AS settings "
    "WHERE name = :name AND token = :token"
)
_CHECK_SHARED = text(
    "UPDATE triage_decision_fence SET token = token "
    "FROM (SELECT set_config('lock_timeout', :ms, true), "
    "pg_advisory_xact_lock_shared(:shared)) AS settings "
    "WHERE name = :name AND token = :token"
)


# On release: the first waiter taken out of the line and woken on its channel.
_WAKE_FIRST = """
local first = redis.call('ZPOPMIN', KEYS[1])
if first[1] then redis.call('PUBLISH', ARGV[1] .. first[1], '') end
"""
# While held: a message to the first waiter, left in the line (returns how many received it).
_HAND_FIRST = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
if first[1] then return redis.call('PUBLISH', ARGV[1] .. first[1], ARGV[2]) end
return 0
"""


# One thread per process sends every lock's hand-offs (each takes a fraction of a
# millisecond), made again in a forked child, which has no threads.
_HANDS: dict[int, ThreadPoolExecutor] = {}
_HANDS_GUARD = threading.Lock()


def _hand_thread() -> ThreadPoolExecutor:
    with _HANDS_GUARD:
        hands = _HANDS.get(os.getpid())
        if hands is None:
            _HANDS.clear()
            hands = _HANDS[os.getpid()] = ThreadPoolExecutor(
                1, thread_name_prefix="decision-lock-hand"
            )
        return hands


def _lock_not_available(exc: DBAPIError) -> bool:
    # PostgreSQL's lock_not_available (55P03) when lock_timeout runs out.
    return getattr(exc.orig, "sqlstate", None) == "55P03"


class DecisionLock:
    """``with lock() as section:`` the Redis lock, renewed while held, and the SQL fence."""

    def __init__(
        self,
        client: redis.Redis,
        engine: Engine,
        name: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        wait_s: float = LOCK_WAIT_S,
        shares: str | None = None,
    ) -> None:
        self.client, self.name = client, name
        self.ttl_s, self.wait_s = ttl_s, wait_s
        self.fence = Fence(engine, name, wait_s=wait_s, shares=shares)
        self._wake_first = client.register_script(_WAKE_FIRST)
        self._hand_first = client.register_script(_HAND_FIRST)

    @property
    def key(self) -> str:
        return f"triage:decide:{self.name}"

    @property
    def waiters(self) -> str:
        """The processes waiting for the lock, by when each began to wait (a sorted set):
        a holder's release wakes the first, on its own pub/sub channel (:meth:`wake`)."""
        return f"{self.key}:waiters"

    def wake(self, waiter: str) -> str:
        """A waiter's channel: an empty message wakes it (the lock was released), any
        other is handed to it by the holder (:meth:`Section.hand`)."""
        return f"{self.key}:wake:{waiter}"

    def hand(self, make: Callable[[], bytes]) -> Future[int]:
        """Publishes what ``make`` returns to the first waiter, on the process's hand-off
        thread; the future gives the number of processes that got it."""
        return _hand_thread().submit(self._hand_first_waiter, make)

    def _hand_first_waiter(self, make: Callable[[], bytes]) -> int:
        if not self.client.exists(self.waiters):  # nobody waits: nothing to make
            return 0
        return int(self._hand_first(keys=[self.waiters], args=[self.wake(""), make()]))

    @contextlib.contextmanager
    def __call__(
        self,
        *,
        while_waiting: Callable[[], None] | None = None,
        handed: Callable[[bytes], None] | None = None,
    ) -> Iterator[Section]:
        """``while_waiting`` runs, while this process waits, each time another holder has
        left and the next one entered: the one before has committed (or given up), so the
        waiting batch can catch up with it outside the lock (worker/pipeline.py).
        ``handed`` runs, while it waits first in line, with what the holder hands it
        before its commit (:meth:`Section.hand`)."""
        # thread_local=False: the renewing thread must see the token this thread acquired.
        lock = self.client.lock(
            self.key,
            timeout=self.ttl_s,
            thread_local=False,
        )
        try:
            acquired = self._acquire(lock, while_waiting, handed)
        except RedisError as exc:
            raise LockTimeout(f"Redis unreachable for the decision lock: {exc}") from exc
        if not acquired:
            raise LockTimeout(f"decision lock {self.name!r} not acquired within {self.wait_s} s")
        done = threading.Event()
        lost = threading.Event()

        def renew() -> None:
            while not done.wait(self.ttl_s / 3):
                try:
                    lock.reacquire()
                except LockError:
                    # Expired and perhaps taken: the fence stops this section's commit.
                    logger.warning("decision lock %r expired during the section", self.name)
                    lost.set()
                    return
                except RedisError as exc:
                    # Redis unreachable: the lock may still be ours; try again, and let the
                    # fence decide if it was not.
                    logger.warning("decision lock %r: renewal failed: %s", self.name, exc)

        renewer = threading.Thread(target=renew, name="decision-lock-renew", daemon=True)
        renewer.start()
        section = None
        try:
            section = Section(self.fence, self.fence.claim(), lost, self.hand)
            yield section
        finally:
            done.set()
            renewer.join()
            if section is not None:  # what it handed reaches the waiter before its wake-up
                section.settle(HAND_WAIT_S)
            with contextlib.suppress(LockError, RedisError):
                lock.release()
                # The first waiter enters at once, rather than at its next ask (half a poll
                # later on average, the lock idle meanwhile); one only, so that a crowd of
                # waiters does not wake to race for it.
                self._wake_first(keys=[self.waiters], args=[self.wake("")])

    def _acquire(
        self,
        lock: Lock,
        while_waiting: Callable[[], None] | None,
        handed: Callable[[bytes], None] | None,
    ) -> bool:
        if lock.acquire(blocking=False):
            return True
        deadline = time.monotonic() + self.wait_s
        seen = None  # the holder's token (each holder's is its own)
        me, since = uuid.uuid4().hex, time.time()
        queued = False
        # A wake-up missed (published before the subscription, or to a waiter that died) is
        # made up by the poll: every waiter still asks at least every LOCK_POLL_S.
        with contextlib.closing(self.client.pubsub(ignore_subscribe_messages=True)) as woken:
            woken.subscribe(self.wake(me))
            try:
                while not lock.acquire(blocking=False):
                    if not queued:  # in line, or back in its place when woken and beaten
                        with self.client.pipeline(transaction=False) as line:
                            line.zadd(self.waiters, {me: since})
                            line.pexpire(self.waiters, int(self.wait_s * 2000))
                            line.execute()
                        queued = True
                    if while_waiting is not None:
                        holder = self.client.get(self.key)
                        if holder is not None and seen is not None and holder != seen:
                            while_waiting()
                        seen = holder
                    if time.monotonic() >= deadline:
                        return False
                    message = woken.get_message(timeout=LOCK_POLL_S)
                    if message is None:
                        continue
                    if message["data"]:  # handed by the holder, still in the line
                        if handed is not None:
                            handed(message["data"])
                    else:
                        queued = False  # taken out of the line by the release that woke it
            finally:
                if queued:
                    with contextlib.suppress(RedisError):
                        self.client.zrem(self.waiters, me)
        return True


class ScopeLocks:
    """One DecisionLock per match scope, by name, each fenced by its own row; their
    commits share ``shared`` (the global lock's fence row, see the module's notes)."""

    def __init__(
        self,
        client: redis.Redis,
        engine: Engine,
        shared: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        wait_s: float = LOCK_WAIT_S,
    ) -> None:
        self.client, self.engine, self.shared = client, engine, shared
        self.ttl_s, self.wait_s = ttl_s, wait_s
        self._locks: dict[str, DecisionLock] = {}
        self._guard = threading.Lock()

    def get(self, name: str) -> DecisionLock:
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = DecisionLock(
                    self.client,
                    self.engine,
                    name,
                    ttl_s=self.ttl_s,
                    wait_s=self.wait_s,
                    shares=self.shared,
                )
            return lock

    def __call__(
        self,
        name: str,
        *,
        while_waiting: Callable[[], None] | None = None,
        handed: Callable[[bytes], None] | None = None,
    ) -> contextlib.AbstractContextManager[Section]:
        return self.get(name)(while_waiting=while_waiting, handed=handed)
