"""Accepting tickets: dedupe redeliveries, put them on the queue, count them.

Order matters for "never lose an accepted ticket": the ticket is published first, and only
then is its delivery id remembered. A crash between the two at worst lets a redelivery
publish the ticket again, which the worker absorbs (decisions are keyed by
``(source, ticket_id)``); remembering first could make a redelivery look done while the
ticket never reached the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import redis
from celery import Celery

from producer.enqueue import BrokerUnavailable, publish
from worker.ledger import Ledger
from worker.tickets import Ticket

logger = logging.getLogger(__name__)

_PREFIX = "triage:seen"


@dataclass(frozen=True)
class Accepted:
    key: str
    status: Literal["accepted", "duplicate"]


class Intake:
    """Per-process: a Redis client for the dedupe keys and the Celery app to publish with."""

    def __init__(self, app: Celery, client: redis.Redis, *, queue: str, dedupe_ttl_s: int) -> None:
        self.app = app
        self.redis = client
        self.queue = queue
        self.ttl = dedupe_ttl_s
        self.ledger = Ledger(client, queue)

    def _delivery_key(self, source: str, delivery_id: str) -> str:
        return f"{_PREFIX}:delivery:{source}:{delivery_id}"

    def _ticket_key(self, ticket: Ticket) -> str:
        return f"{_PREFIX}:ticket:{ticket.key.as_id()}"

    def accept(
        self, tickets: Sequence[Ticket], *, delivery_id: str | None = None
    ) -> list[Accepted]:
        """Publish the tickets not seen before; raise BrokerUnavailable if Redis is down
        (then nothing is remembered, so the sender's retry is accepted normally)."""
        if not tickets:
            return []
        source = tickets[0].source
        try:
            if delivery_id and self.redis.exists(self._delivery_key(source, delivery_id)):
                return [Accepted(t.key.as_id(), "duplicate") for t in tickets]
            seen = self.redis.mget([self._ticket_key(t) for t in tickets])
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
        fresh = [t for t, s in zip(tickets, seen, strict=True) if s is None]
        if fresh:
            for _ in publish(
                self.app, fresh, queue=self.queue, retry_policy=FAST_FAIL, ledger=self.ledger
            ):
                pass
            self._remember(fresh, source, delivery_id)
        fresh_keys = {t.key for t in fresh}
        return [
            Accepted(t.key.as_id(), "accepted" if t.key in fresh_keys else "duplicate")
            for t in tickets
        ]

    def _remember(self, tickets: Sequence[Ticket], source: str, delivery_id: str | None) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            for t in tickets:
                pipe.set(self._ticket_key(t), 1, ex=self.ttl)
            if delivery_id:
                pipe.set(self._delivery_key(source, delivery_id), 1, ex=self.ttl)
            pipe.execute()
        except redis.RedisError as exc:
            # Already on the queue: a redelivery will only be absorbed by the worker.
            logger.warning("could not remember delivery %s: %s", delivery_id, exc)

    def queue_depth(self) -> int:
        return int(self.redis.llen(self.queue))  # type: ignore[arg-type]


# A webhook sender waits on us: fail fast with 503 and let it retry, rather than hold
# its request through kombu's default publish retries.
FAST_FAIL = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

__all__ = ["FAST_FAIL", "Accepted", "BrokerUnavailable", "Intake"]
