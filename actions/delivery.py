"""One attempt of one outbox action, and what follows from the receiver's answer.

:meth:`Deliverer.deliver` claims the action (only a ``pending`` one: a duplicate message,
or one for an action another worker holds, is skipped), sends it, and records the outcome:

- ``2xx``: delivered.
- ``429``, ``5xx``, ``408``, ``409``, ``425``, a timeout or a connection error: failed, tried
  again after an exponential backoff with jitter, or after the wait the receiver asked for
  (``Retry-After`` in seconds or as an HTTP date, ``X-RateLimit-Reset`` as an epoch or in
  seconds), whichever is longer. A 429 (or a 503 with ``Retry-After``) also holds every
  worker's deliveries to that target until then (a Redis key), instead of each action
  finding out on its own.
- Any other ``4xx`` (401, 403, 404, 410, 422 ...) or a redirect: dead at once, with the
  receiver's answer; the same request would be refused again (Standard Webhooks: a 3xx is
  a failure, the URL is to be updated; a 410 asks the sender to stop).
- After ``TRIAGE_ACTIONS_MAX_ATTEMPTS`` attempts: dead.

A worker killed mid-attempt leaves the action ``sending``; after the lease the sweeper
makes it pending again and it is sent again under the same id (at-least-once).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import logging
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import requests
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from actions import webhook
from actions.helpdesks.base import KIND as HELPDESK
from actions.helpdesks.base import HelpdeskWriter, Refused, match_keys
from config.settings import Settings, mask_url
from tickets import db, outbox
from tickets.outbox import ActionRow

logger = logging.getLogger(__name__)

# Client errors that a later attempt may get past; every other 4xx is permanent.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})
# X-RateLimit-Reset above this is an epoch time (GitHub, Zendesk), below it a delay.
EPOCH_FLOOR = 1_000_000_000


@dataclass(frozen=True)
class Outcome:
    """What one attempt ended as."""

    status: str  # delivered, failed, dead (or skipped, held: nothing was sent)
    http_status: int | None = None
    error: str | None = None
    # The wait the receiver asked for, in seconds.
    wait_s: float | None = None


def backoff_s(attempt: int, cap: float) -> float:
    """1, 2, 4 ... seconds after attempts 1, 2, 3 ..., up to cap, with ±25 % jitter so the
    retries of a burst of failures spread out."""
    base = min(cap, 2.0 ** min(attempt - 1, 62))
    return base * random.uniform(0.75, 1.25)


def requested_wait_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait a receiver asks for: ``Retry-After`` (seconds or an HTTP date, RFC 9110
    10.2.3) or ``X-RateLimit-Reset`` (an epoch time or seconds); None without either."""
    now = time.time() if now is None else now
    waits = []
    retry_after = headers.get("retry-after")
    if retry_after:
        value = retry_after.strip()
        if value.isdigit():
            waits.append(float(value))
        else:
            with contextlib.suppress(TypeError, ValueError, IndexError):
                waits.append(email.utils.parsedate_to_datetime(value).timestamp() - now)
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            number = float(reset.strip())
        except ValueError:
            number = None
        if number is not None:
            waits.append(number - now if number > EPOCH_FLOOR else number)
    return max(0.0, *waits) if waits else None


def classify(status: int) -> str:
    """delivered, failed (retry) or dead, for an HTTP status."""
    if 200 <= status < 300:
        return outbox.DELIVERED
    if 300 <= status < 400 or (400 <= status < 500 and status not in RETRYABLE_4XX):
        return outbox.DEAD
    return outbox.FAILED


def excerpt(response: requests.Response) -> str:
    """The receiver's status and the start of its body, for last_error."""
    text = " ".join(response.text[: outbox.ERROR_EXCERPT * 2].split())[: outbox.ERROR_EXCERPT]
    if 300 <= response.status_code < 400 and response.headers.get("location"):
        text = f"redirect to {mask_url(response.headers['location'])} (update the URL) {text}"
    return f"HTTP {response.status_code} {response.reason}: {text}".rstrip(": ")


# The generic cell rate algorithm: the key holds the theoretical arrival time (TAT) of the
# next action in ms of the Redis server's clock; an action may go when now >= TAT - burst.
_GCRA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
if now < tat - burst then return tostring(tat - burst - now) end
tat = tat + interval
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
return '0'
"""


class Holds:
    """A receiver's "wait until" shared by every worker (a Redis key per target)."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.redis, self.prefix = client, f"triage:actions:hold:{queue}:"
        self._pace = client.register_script(_GCRA)

    def _key(self, target: str) -> str:
        return self.prefix + hashlib.sha256(target.encode()).hexdigest()[:24]

    def until(self, target: str) -> float | None:
        try:
            value = self.redis.get(self._key(target))
        except redis.RedisError as exc:  # a hold is an optimisation: send anyway
            logger.warning("could not read the hold of a target: %s", exc)
            return None
        if value is None:
            return None
        until = float(value)
        return until if until > time.time() else None

    def pace(self, target: str, per_min: float) -> float | None:
        """Take a slot of ``target``'s rate (GCRA on the Redis clock, shared by every
        worker, bursts of up to a second's worth); None when this action may go now, else
        the wait in seconds before one may."""
        interval_ms = 60_000.0 / per_min
        burst_ms = max(0.0, 1000.0 - interval_ms)
        try:
            wait_ms = float(
                self._pace(keys=[self._key(target) + ":rate"], args=[interval_ms, burst_ms])
            )
        except redis.RedisError as exc:  # pacing is a courtesy to the receiver: send anyway
            logger.warning("could not pace a target: %s", exc)
            return None
        return wait_ms / 1000 if wait_ms > 0 else None

    def hold(self, target: str, wait_s: float) -> None:
        if wait_s <= 0:
            return
        try:
            self.redis.set(self._key(target), time.time() + wait_s, px=max(1, int(wait_s * 1000)))
        except redis.RedisError as exc:
            logger.warning("could not record the hold of a target: %s", exc)


class Deliverer:
    """Delivers actions: one HTTP client per process (``http``) and the helpdesk writers built
    on it (``writers``, by source), passed in."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        http: requests.Session,
        holds: Holds | None = None,
        writers: Mapping[str, HelpdeskWriter] | None = None,
    ) -> None:
        self.settings, self.engine, self.http, self.holds = settings, engine, http, holds
        self.writers = dict(writers or {})
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._slots_lock = threading.Lock()

    def _slot(self, target: str) -> threading.BoundedSemaphore:
        with self._slots_lock:
            slot = self._slots.get(target)
            if slot is None:
                slot = self._slots[target] = threading.BoundedSemaphore(
                    self.settings.actions_concurrency
                )
            return slot

    def deliver(self, action_id: str) -> Outcome:
        """One attempt at ``action_id``, if it is pending; the outcome is recorded."""
        with Session(self.engine) as session:
            target = session.scalar(
                select(ActionRow.target).where(
                    ActionRow.action_id == action_id, ActionRow.status == outbox.PENDING
                )
            )
            if target is None:
                return Outcome("skipped")
            held = self.holds.until(target) if self.holds is not None else None
            if held is not None:
                outbox.postpone(session, action_id, datetime.fromtimestamp(held, UTC))
                return Outcome("held")
            rate = self.settings.actions_rate_per_min.get(target)
            wait = self.holds.pace(target, rate) if rate and self.holds is not None else None
            if wait is not None:
                # Over the target's rate: the sweeper publishes it again once a slot is free.
                outbox.postpone(session, action_id, datetime.now(UTC) + timedelta(seconds=wait))
                return Outcome("held", wait_s=wait)
        slot = self._slot(target)
        if not slot.acquire(timeout=self.settings.actions_timeout_s):
            # This process already sends that many to the target: the sweeper comes back.
            with Session(self.engine) as session:
                outbox.postpone(session, action_id, datetime.now(UTC) + timedelta(seconds=1))
            return Outcome("held")
        try:
            return self._attempt(action_id)
        finally:
            slot.release()

    def _attempt(self, action_id: str) -> Outcome:
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=self.settings.actions_lease_s)
        with Session(self.engine) as session:
            row = outbox.claim(session, action_id, now, lease)
            if row is None:
                return Outcome("skipped")
            attempt, kind, target, payload = row.attempts, row.kind, row.target, row.payload
        if kind == webhook.KIND:
            outcome = self._send_webhook(action_id, target, payload)
        elif kind == HELPDESK:
            outcome = self._write_back(action_id, target, payload)
        else:
            outcome = Outcome(outbox.DEAD, error=f"no sender for actions of kind {kind!r}")
        self._record(action_id, attempt, target, outcome)
        return outcome

    def _send_webhook(self, action_id: str, url: str, payload: dict[str, object]) -> Outcome:
        key = self.settings.outbound_webhook_key
        if key is None:
            return Outcome(outbox.FAILED, error="TRIAGE_OUTBOUND_WEBHOOK_SECRET is not set")
        data = webhook.body(payload)
        headers = webhook.headers(key, action_id, int(time.time()), data)
        timeout = self.settings.actions_timeout_s
        try:
            response = self.http.post(
                url,
                data=data,
                headers=headers,
                timeout=(min(timeout, 5.0), timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            return Outcome(outbox.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        result = classify(response.status_code)
        wait = requested_wait_s(response.headers)
        error = None if result == outbox.DELIVERED else excerpt(response)
        return Outcome(result, response.status_code, error, wait)

    def _write_back(self, action_id: str, source: str, decision: dict[str, Any]) -> Outcome:
        writer = self.writers.get(source)
        if writer is None:
            # Another worker may have the credential; this one retries until its attempts run out.
            return Outcome(
                outbox.FAILED,
                error=f"write-back to {source} is off in this worker: "
                f"TRIAGE_{source.upper()}_API_TOKEN is not set",
            )
        with Session(self.engine) as session:
            subjects = db.subjects(session, match_keys(decision))
        try:
            writer.write(writer.prepare(action_id, decision, subjects))
        except Refused as refused:
            response = refused.response
            wait = refused.wait_s
            return Outcome(
                classify(refused.status),
                refused.status,
                excerpt(response),
                requested_wait_s(response.headers) if wait is None else wait,
            )
        except requests.RequestException as exc:
            return Outcome(outbox.FAILED, error=f"{type(exc).__name__}: {exc}"[:500])
        except ValueError as exc:  # the vendor cannot address the ticket: sending again won't
            return Outcome(outbox.DEAD, error=str(exc)[:500])
        return Outcome(outbox.DELIVERED)

    def _record(self, action_id: str, attempt: int, target: str, outcome: Outcome) -> None:
        now = datetime.now(UTC)
        status, error, after = outcome.status, outcome.error, 0.0
        if status == outbox.FAILED:
            asked = outcome.wait_s is not None and outcome.http_status in (429, 503)
            if asked and self.holds is not None:
                self.holds.hold(target, outcome.wait_s or 0.0)
            if attempt >= self.settings.actions_max_attempts:
                status, error = outbox.DEAD, f"gave up after {attempt} attempts: {error}"
            else:
                after = max(
                    backoff_s(attempt, self.settings.actions_backoff_max_s), outcome.wait_s or 0.0
                )
        with Session(self.engine) as session:
            held = outbox.settle(
                session,
                action_id,
                attempt,
                status=status,
                next_attempt_at=now + timedelta(seconds=after),
                last_status=outcome.http_status,
                last_error=error,
                delivered_at=now if status == outbox.DELIVERED else None,
            )
        log = logger.info if status == outbox.DELIVERED else logger.warning
        log(
            "action %s attempt %d: %s%s%s",
            action_id,
            attempt,
            status,
            f" ({error})" if error else "",
            "" if held else " (its lease had passed: another attempt holds it)",
        )

    def close(self) -> None:
        self.http.close()
