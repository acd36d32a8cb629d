"""What `triage serve` checks before it takes work on: backlog, rate, JSON shape.

- :class:`QueueGate`: backpressure. The backlog is read from Redis (one pipelined
  ``LLEN`` + ``HLEN``) at most once per ``cache_s`` per process, not once per request.
- :class:`RateLimiter`: a per-source budget (GCRA, one Lua script call), kept in Redis so
  that every `triage serve` process behind a load balancer shares it.
- :func:`json_depth`: the nesting depth of a JSON text, found before ``json.loads`` builds
  anything: a few vectorised passes (numpy) find the strings and count the brackets
  outside them, linear in the body whatever it holds.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

logger = logging.getLogger(__name__)

# kombu's Redis transport keeps every message a worker has taken but not acked in this
# hash (transport option `unacked_key`). Measured with the embedding service down: the
# worker holds ~64 messages there (retries waiting out their countdown) and the rest stay
# on the list, so the backlog is the sum of both.
UNACKED_KEY = "unacked"


class QueueGate:
    """Is the backlog (queue + unacked) at or over ``max_depth``? Cached for ``cache_s``.

    The cache trades precision for cost: at R requests per second the backlog can overshoot
    ``max_depth`` by at most R x ``cache_s`` tickets.
    """

    def __init__(
        self, client: redis.Redis, queue: str, max_depth: int, *, cache_s: float = 1.0
    ) -> None:
        self.redis, self.queue, self.max_depth, self.cache_s = client, queue, max_depth, cache_s
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._depth = 0

    def depth(self) -> int:
        """The backlog now (uncached); raises redis.RedisError if Redis is unreachable."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(self.queue)
        pipe.hlen(UNACKED_KEY)
        waiting, unacked = pipe.execute()
        return int(waiting) + int(unacked)

    def full(self) -> int | None:
        """The backlog if it is at or over the limit, else None. A Redis error is left to
        the publish that follows, which turns it into 503 (queue unavailable)."""
        now = time.monotonic()
        with self._lock:
            if now - self._read_at >= self.cache_s:
                self._read_at = now
                try:
                    self._depth = self.depth()
                except redis.RedisError:
                    # Cached too: a Redis that hangs must not cost every request a timeout.
                    self._depth = 0
            depth = self._depth
        return depth if depth >= self.max_depth else None


class QueueFull(Exception):
    """The backlog stayed at the limit for longer than the caller would wait."""


def wait_for_room(
    gate: QueueGate,
    *,
    max_wait_s: float,
    on_wait: Callable[[int], None],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once the backlog is under the limit, backing off 1, 2, 4 ... 30 s between
    looks; ``on_wait(depth)`` is told each time. Raises QueueFull after ``max_wait_s``
    and redis.RedisError if Redis cannot be asked."""
    waited, pause = 0.0, 1.0
    while (depth := gate.depth()) >= gate.max_depth:
        if waited >= max_wait_s:
            raise QueueFull(
                f"{depth} messages still waiting after {waited:.0f} s "
                f"(TRIAGE_MAX_QUEUE_DEPTH={gate.max_depth}): are the workers running?"
            )
        on_wait(depth)
        step = min(pause, max(max_wait_s - waited, 0.0)) or pause
        sleep(step)
        waited += step
        pause = min(pause * 2, 30.0)


# GCRA (the generic cell rate algorithm): one key per source holds the "theoretical
# arrival time" in ms; a request is allowed if it is not earlier than that time minus the
# burst allowance. Redis's own clock is used, so serve processes on several hosts agree.
_GCRA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat + interval - tolerance
if allow_at > now then
  return {0, tostring(allow_at - now)}
end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil(tat + interval - now) + 1000)
return {1, '0'}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int = 0


class RateLimiter:
    """``rate`` requests per second per source with ``burst`` on top; rate 0 turns it off.

    If Redis cannot be asked, the request is allowed: the limiter protects the service, and
    an outage of Redis already stops ingest with its own 503.
    """

    def __init__(self, client: redis.Redis, *, namespace: str, rate: float, burst: int) -> None:
        self.redis, self.rate, self.burst = client, rate, burst
        self.prefix = f"triage:rate:{namespace}:"
        self._script = client.register_script(_GCRA)

    def check(self, source: str) -> Verdict:
        if self.rate <= 0:
            return Verdict(True)
        interval_ms = 1000.0 / self.rate
        try:
            allowed, wait_ms = self._script(
                keys=[self.prefix + source], args=[interval_ms, interval_ms * self.burst]
            )
        except redis.RedisError as exc:
            logger.warning("rate limit not checked (Redis: %s)", exc)
            return Verdict(True)
        if int(allowed):
            return Verdict(True)
        return Verdict(False, max(1, int(float(wait_ms) / 1000 + 0.999)))


def token_source(token: str) -> str:
    """A bearer token's rate-limit key: a digest, so the token never lands in Redis."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]


_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPEN, _CLOSE = np.frombuffer(b"[{", dtype=np.uint8), np.frombuffer(b"]}", dtype=np.uint8)


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (brackets inside strings do not
    count). Exact for valid JSON; for broken JSON a number the parser then refuses anyway.

    Linear in the body whatever it holds: each step below is one vectorised pass. (A regular
    expression that skips strings backtracks quadratically on an unterminated string full of
    escapes: 48 KB of ``\\"`` took 6.6 s, during which the event loop stood still.)
    """
    codes = np.frombuffer(raw, dtype=np.uint8)
    if not codes.size:
        return 0
    # A quote is escaped when an odd run of backslashes stands right before it: the run's
    # length is the distance back to the last byte that is not a backslash.
    index = np.arange(codes.size, dtype=np.int64)
    last_other = np.maximum.accumulate(np.where(codes != _BACKSLASH, index, -1))
    run_before = np.empty(codes.size, dtype=np.int64)
    run_before[0] = 0
    run_before[1:] = index[:-1] - last_other[:-1]
    quotes = (codes == _QUOTE) & (run_before % 2 == 0)
    # Inside a string: an odd number of real quotes so far (a closing quote counts as inside).
    inside = (np.cumsum(quotes) % 2 == 1) | quotes
    opening = np.isin(codes, _OPEN) & ~inside
    closing = np.isin(codes, _CLOSE) & ~inside
    steps = opening.astype(np.int64) - closing.astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


# Headers a request may carry once: a second copy is read as the first by one layer (a proxy,
# a framework) and as the last by another, so a signature or a content type could be checked
# on one value and acted on with the other.
SINGLE_HEADERS = frozenset(
    {
        b"content-type",
        b"content-length",
        b"authorization",
        b"x-zendesk-webhook-signature",
        b"x-zendesk-webhook-signature-timestamp",
        b"x-zendesk-webhook-invocation-id",
        b"x-hub-signature-256",
        b"x-hub-signature",
        b"x-helpscout-signature",
        b"x-helpscout-event",
        b"x-webhook-token",
        b"x-github-event",
        b"x-github-delivery",
        b"x-atlassian-webhook-identifier",
        b"x-zammad-delivery",
    }
)


def request_shape_problem(scope: dict[str, Any]) -> str | None:
    """Why a request is refused (400) before any route sees it, or None.

    - a NUL character in the path or the query: no id, filter or cursor holds one, and
      PostgreSQL cannot even compare one (the query would fail as "database unavailable");
    - a header of SINGLE_HEADERS sent more than once.
    """
    if "\x00" in scope.get("path", "") or _has_nul(scope.get("query_string", b"")):
        return "the URL contains a NUL character (%00): no id or filter holds one"
    seen: dict[bytes, int] = {}
    for name, _ in scope.get("headers", ()):
        lowered = bytes(name).lower()
        if lowered in SINGLE_HEADERS:
            seen[lowered] = seen.get(lowered, 0) + 1
            if seen[lowered] == 2:
                return f"header {lowered.decode()} is sent more than once: send it once"
    return None


def _has_nul(query: bytes) -> bool:
    return b"\x00" in query or b"%00" in query


class RequestShapeGuard:
    """ASGI middleware: answers 400 with the reason of :func:`request_shape_problem`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = request_shape_problem(scope)
            if problem is not None:
                from starlette.responses import JSONResponse

                await JSONResponse({"detail": problem}, status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = [
    "QueueFull",
    "QueueGate",
    "RateLimiter",
    "RequestShapeGuard",
    "Verdict",
    "json_depth",
    "request_shape_problem",
    "token_source",
    "wait_for_room",
]
