"""The writer side of tickets/heartbeat.py: this worker process's beat, while its consumer runs.

Celery's consumer sends an event heartbeat every 2 s from its own loop, and only while it
is connected to the broker (the ``Heart`` bootstep is stopped when the connection is lost
and started again with the consumer); it signals each one (``heartbeat_sent``). So a beat
written on that signal says what readiness needs to know: this process is consuming the
queue now. A worker stuck in a broker outage, hung, or dead stops beating and drops out of
:func:`tickets.heartbeat.live_workers` within its TTL; a clean shutdown forgets at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import RedisError

from tickets import heartbeat

logger = logging.getLogger(__name__)


class HeartbeatWriter:
    """Writes one worker's beat at most every ``interval_s``, on each consumer pulse."""

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        name: str,
        facts: Callable[[], dict[str, Any]],
        *,
        interval_s: float = heartbeat.HEARTBEAT_INTERVAL_S,
    ) -> None:
        self.client, self.queue, self.name, self.facts = client, queue, name, facts
        self.interval_s = interval_s
        self._last = float("-inf")
        self._stopped = False
        self._failing = False
        self._lock = threading.Lock()

    def pulse(self) -> None:
        """The consumer is connected and its loop turns: beat, unless one was written lately.

        Runs on the consumer's loop, so it never raises and waits on Redis no longer than
        the client's socket timeout (the broker is that same Redis: if it hangs, so does
        the consumer)."""
        now = time.monotonic()
        with self._lock:
            # 0.8: Celery's 2 s pulses then write every 4 s against a 5 s interval.
            if self._stopped or now - self._last < 0.8 * self.interval_s:
                return
            self._last = now
        try:
            heartbeat.beat(self.client, self.queue, self.name, self.facts())
        except RedisError as exc:
            if not self._failing:
                logger.warning("worker heartbeat not written: %s", exc)
            self._failing = True
            return
        if self._failing:
            logger.info("worker heartbeat written again")
        self._failing = False

    def stop(self) -> None:
        """A clean shutdown: no more beats, and readers stop listing this worker at once."""
        with self._lock:
            self._stopped = True
        try:
            heartbeat.forget(self.client, self.queue, self.name)
        except RedisError as exc:
            logger.warning("worker heartbeat not removed (it expires by itself): %s", exc)
