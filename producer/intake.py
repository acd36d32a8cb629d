"""Accepting tickets: dedupe redeliveries, put them on the queue, count them.

Dedupe is a claim taken atomically in Redis (``SET NX``, one script call per request): of
twenty identical deliveries arriving together exactly one publishes; the others wait for
its outcome (a few milliseconds) and are answered "duplicate" once it is on the queue.

Order matters for "never lose an accepted ticket": a claim is first *pending* (a short time
to live), the ticket is then published, and only then is the claim made *done* (kept for
TRIAGE_DEDUPE_TTL_S). A failed publish releases the claim, so the sender's retry is accepted
normally; a crash between the claim and the publish leaves a pending claim that expires,
and a copy that meets a pending claim never answers "duplicate" for it (it waits, then
answers 503 "retry"), so nothing is dropped on the word of a publish that never happened.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import redis
from celery import Celery

from tickets.ledger import Ledger
from tickets.model import Ticket, TicketKey, TicketUpdate
from tickets.queue import BrokerUnavailable, publish, publish_update

logger = logging.getLogger(__name__)

_PREFIX = "triage:seen"
# A pending claim outlives any publish (which fails fast, FAST_FAIL below, within a few
# seconds) and is short enough that a crash mid-publish delays the sender's retry only so.
PENDING_TTL_S = 60
# How long a copy waits for the outcome of a claim held by a concurrent request.
CLAIM_WAIT_S = 3.0
_DONE = b"1"

# KEYS: [delivery key,] ticket keys. ARGV: claim token, pending TTL, 1 if KEYS[1] is a
# delivery key. Returns per key: "mine" (claimed now, or already by this token), "done"
# (published before) or "pending" (another request is publishing it). A delivery key that
# is not ours answers for the whole request: its tickets are not looked at.
_CLAIM = """
local out = {}
local first = 1
local function claim(key)
  if redis.call('SET', key, ARGV[1], 'NX', 'EX', ARGV[2]) then return 'mine' end
  local v = redis.call('GET', key)
  if v == ARGV[1] then return 'mine' end
  if v == '1' then return 'done' end
  return 'pending'
end
if ARGV[3] == '1' then
  out[1] = claim(KEYS[1])
  if out[1] ~= 'mine' then return out end
  first = 2
end
for i = first, #KEYS do out[i] = claim(KEYS[i]) end
return out
"""
# Delete the keys still claimed by this token (a failed publish).
_RELEASE = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 0
"""


class ClaimPending(Exception):
    """An identical delivery is being published by another request right now (HTTP 503:
    retry; answering "duplicate" could drop a ticket whose publish then fails)."""


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
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def accept_update(self, update: TicketUpdate) -> None:
        """Publish a helpdesk's update of a ticket; BrokerUnavailable if Redis is down. No
        dedupe: the worker applies an update idempotently."""
        publish_update(self.app, update, queue=self.queue)

    def _delivery_key(self, source: str, delivery_id: str) -> str:
        return f"{_PREFIX}:delivery:{source}:{delivery_id}"

    def _ticket_key(self, ticket: Ticket) -> str:
        return f"{_PREFIX}:ticket:{ticket.key.as_id()}"

    def accept(
        self,
        tickets: Sequence[Ticket],
        *,
        delivery_id: str | None = None,
        wait_s: float = CLAIM_WAIT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> list[Accepted]:
        """Publish the tickets not seen before; raise BrokerUnavailable if Redis is down
        (then nothing is remembered, so the sender's retry is accepted normally), and
        ClaimPending if a concurrent request holds a claim past ``wait_s``."""
        if not tickets:
            return []
        source = tickets[0].source
        # A key twice in one request: the first one counts.
        first_of: dict[TicketKey, Ticket] = {}
        for t in tickets:
            first_of.setdefault(t.key, t)
        unique = list(first_of.values())
        keys = [self._ticket_key(t) for t in unique]
        if delivery_id:
            keys.insert(0, self._delivery_key(source, delivery_id))
        token = uuid.uuid4().hex
        deadline = time.monotonic() + wait_s
        pause = 0.005
        try:
            while True:
                answers = [
                    a.decode() if isinstance(a, bytes) else str(a)
                    for a in self._claim(
                        keys=keys, args=[token, PENDING_TTL_S, 1 if delivery_id else 0]
                    )
                ]
                if "pending" not in answers:
                    break
                if time.monotonic() >= deadline:
                    self._release(keys=keys, args=[token])
                    raise ClaimPending(
                        f"an identical delivery to {source} is being accepted right now"
                    )
                sleep(pause)
                pause = min(pause * 2, 0.1)
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"Redis unreachable: {exc}") from exc
        if delivery_id and answers[0] == "done":
            return [Accepted(t.key.as_id(), "duplicate") for t in tickets]
        ticket_answers = answers[1:] if delivery_id else answers
        fresh = [t for t, a in zip(unique, ticket_answers, strict=True) if a == "mine"]
        if fresh:
            try:
                for _ in publish(
                    self.app, fresh, queue=self.queue, retry_policy=FAST_FAIL, ledger=self.ledger
                ):
                    pass
            except BrokerUnavailable:
                self._forget(keys, token)
                raise
        self._remember([self._ticket_key(t) for t in fresh], source, delivery_id)
        fresh_keys = {t.key for t in fresh}
        # the first occurrence of a fresh key is the accepted one
        return [
            Accepted(
                t.key.as_id(),
                "accepted" if t.key in fresh_keys and first_of[t.key] is t else "duplicate",
            )
            for t in tickets
        ]

    def _forget(self, keys: list[str], token: str) -> None:
        try:
            self._release(keys=keys, args=[token])
        except redis.RedisError as exc:
            # The claims expire after PENDING_TTL_S: the retry is accepted then.
            logger.warning("could not release claims after a failed publish: %s", exc)

    def _remember(self, keys: list[str], source: str, delivery_id: str | None) -> None:
        """The claims become "done" for TRIAGE_DEDUPE_TTL_S: the tickets are on the queue."""
        if delivery_id:
            keys = [*keys, self._delivery_key(source, delivery_id)]
        if not keys:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, _DONE, ex=self.ttl)
            pipe.execute()
        except redis.RedisError as exc:
            # Already on the queue: the pending claims expire, and a later redelivery is
            # published again and absorbed by the worker.
            logger.warning("could not remember delivery %s: %s", delivery_id, exc)

    def queue_depth(self) -> int:
        return int(self.redis.llen(self.queue))  # type: ignore[arg-type]


# A webhook sender waits on us: fail fast with 503 and let it retry, rather than hold
# its request through kombu's default publish retries.
FAST_FAIL = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

__all__ = ["FAST_FAIL", "Accepted", "BrokerUnavailable", "ClaimPending", "Intake"]
