"""The ledger of accepted tickets: what closes kombu's fetch window.

Measured (README "Fault tests"): kombu's Redis transport takes a message with ``BRPOP`` and
only then records it as unacked; a worker killed between the two, or a Redis killed with a
``BRPOP`` reply in flight, takes the message with it, and the visibility timeout never
brings it back. About 1 ticket in 2,000 under repeated SIGKILLs.

So every ticket a producer accepts is also written here, in Redis, before it is published:
a sorted set ``key -> last sign of life`` and a hash ``key -> [message, mode]``. A worker
touches the entries of each batch it takes (one call per batch) and clears them once the
ticket has its row in SQL (one call per batch; a dead-lettered ticket clears its own). The
sweep, run by one worker at a time, looks at entries with no sign of life for longer than
a message can legitimately be in flight, and only while the queue is empty (a ticket
still waiting in it is not lost): those with a row in SQL are cleared, the others were lost
in transit and are published again. A ticket published twice is absorbed by the worker
(decisions are keyed by ticket), so the sweep errs on the side of publishing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from worker.tickets import Ticket, TicketKey

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

    def record(self, tickets: Sequence[Ticket], mode: str) -> None:
        """Before the publish: these tickets are accepted (one round trip)."""
        if not tickets:
            return
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(self.times, {t.key.as_id(): now for t in tickets})
        pipe.hset(
            self.payloads,
            mapping={t.key.as_id(): json.dumps([t.to_message(), mode]) for t in tickets},
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

    def size(self) -> int:
        return int(self.redis.zcard(self.times))  # type: ignore[arg-type]

    def sweep(
        self, engine: Engine, republish: Any, *, silent_for_s: float, now: float | None = None
    ) -> SweepResult:
        """Clear what SQL has; publish again what was lost. ``republish(tickets, mode)``
        publishes (producer.enqueue.publish); returns what was done."""
        if int(self.redis.llen(self.queue)) > 0:  # type: ignore[arg-type]
            return SweepResult(skipped="the queue is not empty")
        cutoff = (now or time.time()) - silent_for_s
        stale = [
            TicketKey.from_id(raw.decode() if isinstance(raw, bytes) else str(raw))
            for raw in self.redis.zrangebyscore(self.times, "-inf", cutoff, 0, SWEEP_LIMIT)  # type: ignore[union-attr]
        ]
        if not stale:
            return SweepResult()
        done = _settled_in_sql(engine, stale)
        self.clear(done)
        lost = [k for k in stale if k not in done]
        republished = 0
        if lost:
            raw = self.redis.hmget(self.payloads, [k.as_id() for k in lost])
            by_mode: dict[str, list[Ticket]] = {}
            for key, entry in zip(lost, raw, strict=True):  # type: ignore[arg-type]
                if entry is None:
                    logger.error("ledger: no payload for lost ticket %s; dropping the entry", key)
                    self.clear([key])
                    continue
                message, mode = json.loads(entry)
                by_mode.setdefault(mode, []).append(Ticket.from_message(message))
            for mode, tickets in by_mode.items():
                # A fresh sign of life first: a sweep running meanwhile must not send it too.
                self.touch(t.key for t in tickets)
                republished += sum(1 for _ in republish(tickets, mode))
            logger.warning(
                "ledger: %d ticket(s) lost in transit published again: %s",
                republished,
                ", ".join(str(k) for k in lost[:10]),
            )
        return SweepResult(len(stale), len(done), republished)


def _settled_in_sql(engine: Engine, keys: Sequence[TicketKey]) -> set[TicketKey]:
    """Keys with a ticket row (decided or stored as history) or a failure row."""
    from worker.db import FailureRow, TicketRow

    found: set[TicketKey] = set()
    sources = {k.source for k in keys}
    ids = {k.ticket_id for k in keys}
    with Session(engine) as session:
        for model in (TicketRow, FailureRow):
            rows = session.execute(
                select(model.source, model.ticket_id).where(
                    model.source.in_(sources) & model.ticket_id.in_(ids)
                )
            )
            found.update(TicketKey(r.source, r.ticket_id) for r in rows)
    return found & set(keys)
