"""The ledger of accepted tickets: what closes kombu's fetch window.

Measured (docs/reliability.md, "Results"): kombu's Redis transport takes a message with
``BRPOP`` and only then records it as unacked; a worker killed between the two, or a Redis
killed with a ``BRPOP`` reply in flight, takes the message with it, and the visibility
timeout never brings it back. About 1 ticket in 2,000 under repeated SIGKILLs.

So every ticket a producer accepts is also written here, in Redis, before it is published:
a sorted set ``key -> last sign of life`` and a hash ``key -> [message, mode, recorded at]``. A worker
touches the entries of each batch it takes (one call per batch) and clears them once the
ticket has its row in SQL (one call per batch; a dead-lettered ticket clears its own). The
sweep, run by one worker at a time, looks at entries with no sign of life for longer than
a message can legitimately be in flight, and only while the queue is empty (a ticket
still waiting in it is not lost): those whose entry SQL has settled are cleared, the others
were lost in transit and are published again. An entry is settled by what it asked for: a
ticket sent for routing by its decision, history (``backfill``) by its ticket row, either
by a failure row written after the entry was recorded. Any row is not enough: a re-driven
ticket keeps its (older) failure row until it is decided, and a ticket stored as history
and later sent for routing already has its ticket row. A ticket published twice is
absorbed by the worker (decisions are keyed by ticket), so the sweep errs on the side of
publishing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tickets.db import DecisionRow, FailureRow, TicketRow, key_filter
from tickets.model import Ticket, TicketKey

logger = logging.getLogger(__name__)

# Entries read per sweep; the rest wait for the next one.
SWEEP_LIMIT = 1000


@dataclass(frozen=True)
class SweepResult:
    looked_at: int = 0
    resolved: int = 0
    republished: int = 0
    skipped: str | None = None  # why the sweep did nothing


class Ledger:
    """One queue's ledger in Redis."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.redis = client
        self.queue = queue
        self.times = f"triage:ledger:{queue}"
        self.payloads = f"triage:ledger:{queue}:payload"

    def record(self, tickets: Iterable[Ticket], mode: str) -> None:
        """Before the publish: these tickets are accepted (one round trip)."""
        tickets = list(tickets)
        if not tickets:
            return
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.times, {t.key.as_id(): now for t in tickets})
        pipe.hset(
            self.payloads,
            mapping={t.key.as_id(): json.dumps([t.to_message(), mode, now]) for t in tickets},
        )
        pipe.execute()

    def touch(self, keys: Iterable[TicketKey]) -> None:
        """A worker holds these tickets: not lost (only entries that exist are updated)."""
        ids = [k.as_id() for k in keys]
        if ids:
            self.redis.zadd(self.times, dict.fromkeys(ids, time.time()), xx=True)

    def clear(self, keys: Iterable[TicketKey]) -> None:
        """These tickets have their row in SQL."""
        ids = [k.as_id() for k in keys]
        if ids:
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(self.times, *ids)
            pipe.hdel(self.payloads, *ids)
            pipe.execute()

    def holds(self, key: TicketKey) -> bool:
        """Whether ``key`` is accepted and not yet settled (in flight to its SQL row)."""
        return self.redis.zscore(self.times, key.as_id()) is not None

    def size(self) -> int:
        return int(self.redis.zcard(self.times))  # type: ignore[arg-type]

    def sweep(
        self, engine: Engine, republish: Any, *, silent_for_s: float, now: float | None = None
    ) -> SweepResult:
        """Clear what SQL has; publish again what was lost. ``republish(tickets, mode)``
        publishes (tickets.queue.publish); returns what was done."""
        if int(self.redis.llen(self.queue)) > 0:  # type: ignore[arg-type]
            return SweepResult(skipped="the queue is not empty")
        cutoff = (now or time.time()) - silent_for_s
        silent: Any = self.redis.zrangebyscore(
            self.times, "-inf", cutoff, 0, SWEEP_LIMIT, withscores=True
        )
        stale: dict[TicketKey, float] = {
            TicketKey.from_id(raw.decode() if isinstance(raw, bytes) else str(raw)): float(score)
            for raw, score in silent
        }
        if not stale:
            return SweepResult()
        raw = self.redis.hmget(self.payloads, [k.as_id() for k in stale])
        entries: dict[TicketKey, Entry] = {}
        for key, entry in zip(stale, raw, strict=True):  # type: ignore[arg-type]
            if entry is None:
                logger.error("ledger: no payload for silent ticket %s; dropping the entry", key)
                self.clear([key])
                continue
            fields: list[Any] = json.loads(entry)
            message, mode, *rest = fields
            # An entry written without its time: its last sign of life is the safe stand-in
            # (no earlier than the record, so fewer failure rows count as its outcome).
            recorded = float(rest[0]) if rest else stale[key]
            entries[key] = Entry(message, mode, recorded)
        done = settled_in_sql(engine, entries)
        self.clear(done)
        lost = [k for k in entries if k not in done]
        republished = 0
        if lost:
            by_mode: dict[str, list[Ticket]] = {}
            for key in lost:
                by_mode.setdefault(entries[key].mode, []).append(
                    Ticket.from_message(entries[key].message)
                )
            for mode, tickets in by_mode.items():
                # A fresh sign of life first: a sweep running meanwhile must not send it too.
                self.touch(t.key for t in tickets)
                republished += sum(1 for _ in republish(tickets, mode))
            logger.warning(
                "ledger: %d ticket(s) lost in transit published again: %s",
                republished,
                ", ".join(str(k) for k in lost[:10]),
            )
        return SweepResult(len(entries), len(done), republished)


@dataclass(frozen=True)
class Entry:
    """One ledger entry: the message as accepted, what it asks for, when it was recorded."""

    message: dict[str, Any]
    mode: str  # "route": a decision; "backfill": a ticket row (history)
    recorded_at: float  # Unix time


def settled_in_sql(engine: Engine, entries: Mapping[TicketKey, Entry]) -> set[TicketKey]:
    """The keys whose entry SQL has settled: a routed ticket by its decision, history by its
    ticket row, and either by a failure row written after the entry was recorded (a failure
    row from before is what a re-drive is trying to cure; it stays until the decision)."""
    keys = list(entries)
    if not keys:
        return set()
    with Session(engine) as session:
        decided, stored = _keys(session, DecisionRow, keys), _keys(session, TicketRow, keys)
        failed = {
            TicketKey(r.source, r.ticket_id): _utc(r.failed_at)
            for r in session.execute(
                select(FailureRow.source, FailureRow.ticket_id, FailureRow.failed_at).where(
                    key_filter(FailureRow, keys)
                )
            )
        }
    done: set[TicketKey] = set()
    for key, entry in entries.items():
        wanted = stored if entry.mode == "backfill" else decided
        failed_at = failed.get(key)
        if key in wanted or (failed_at is not None and failed_at.timestamp() > entry.recorded_at):
            done.add(key)
    return done


def _keys(session: Session, model: Any, keys: list[TicketKey]) -> set[TicketKey]:
    query = select(model.source, model.ticket_id).where(key_filter(model, keys))
    return {TicketKey(s, t) for s, t in session.execute(query)}


def _utc(when: datetime) -> datetime:
    # SQLite gives back naive datetimes; they were written in UTC.
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
