"""The outbox sweeper: publishes the actions whose time has come.

Every ``TRIAGE_ACTIONS_SWEEP_S`` one worker of the queue (a Redis key claims the period)
takes the open actions whose ``next_attempt_at`` has passed: retries that are due, leases
of killed workers that ran out, and actions committed but never published (a crash
between the decision's commit and its publish, or a broker error at that moment). They
become ``pending`` for one more lease and get a delivery message each.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from config.settings import Settings
from tickets import outbox

logger = logging.getLogger(__name__)

# Actions published per sweep; the rest wait for the next one.
SWEEP_LIMIT = 1000


def sweep_once(
    engine: Engine, publish: Callable[[list[str]], Any], settings: Settings
) -> list[str]:
    """Make the due actions pending again and publish them; their ids."""
    now = datetime.now(UTC)
    grace = now + timedelta(seconds=settings.actions_lease_s)
    with Session(engine) as session:
        due = outbox.requeue_due(session, now, grace, SWEEP_LIMIT)
    if due:
        publish(due)
        logger.info("outbox sweep: %d action(s) published again", len(due))
    return due


class OutboxSweeper:
    """Runs :func:`sweep_once` in a thread of this process, one sweep per period across
    every worker of the queue."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        client: redis.Redis,
        publish: Callable[[list[str]], object],
    ) -> None:
        self.settings, self.engine, self.redis, self.publish = settings, engine, client, publish
        self.claim = f"triage:actions-sweep:{settings.queue}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-sweep", daemon=True)
        self._thread.start()

    def sweep(self) -> list[str]:
        period_ms = max(1, int(self.settings.actions_sweep_s * 1000))
        if not self.redis.set(self.claim, os.getpid(), nx=True, px=period_ms):
            return []  # another worker sweeps this period
        return sweep_once(self.engine, self.publish, self.settings)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.actions_sweep_s):
            try:
                self.sweep()
            except Exception as exc:  # the safety net must never take the worker down
                logger.warning("outbox sweep failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
