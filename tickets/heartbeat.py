"""Worker heartbeats in Redis: which worker processes consume a queue right now.

Each worker process keeps one key, ``triage:worker:<queue>:<name>``, holding a few facts
about itself as JSON, with a time to live of :data:`HEARTBEAT_TTL_S`. The worker refreshes
it while its consumer is connected to the broker, so a worker that has died, or whose
consumer lost the broker, disappears from :func:`live_workers` within the TTL. Readers
(`triage doctor`, the detailed readiness answer) only read; a missing worker is reported,
never repaired, because tickets wait safely in the queue until one comes back.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

# A beat is written every few seconds; three missed beats make a worker count as gone.
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15


def _key(queue: str, name: str = "*") -> str:
    return f"triage:worker:{queue}:{name}"


@dataclass(frozen=True)
class WorkerBeat:
    """The last beat of one worker process."""

    name: str
    at: float
    facts: dict[str, Any]

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.at)


def beat(client: redis.Redis, queue: str, name: str, facts: dict[str, Any]) -> None:
    """This worker is alive and consuming ``queue``; raises redis.RedisError if unreachable."""
    value = json.dumps({**facts, "at": time.time()})
    client.set(_key(queue, name), value, ex=HEARTBEAT_TTL_S)


def forget(client: redis.Redis, queue: str, name: str) -> None:
    """This worker stops consuming (a clean shutdown): do not wait for the TTL."""
    client.delete(_key(queue, name))


def live_workers(client: redis.Redis, queue: str) -> list[WorkerBeat]:
    """The workers that beat for ``queue`` within the TTL, newest beat first.

    Raises redis.RedisError if Redis is unreachable."""
    keys = list(client.scan_iter(match=_key(queue), count=100))
    if not keys:
        return []
    beats = []
    prefix = _key(queue, "")
    for key, value in zip(keys, client.mget(keys), strict=True):
        if value is None:  # expired between SCAN and MGET
            continue
        facts = json.loads(value)
        at = float(facts.pop("at", 0.0))
        name = (key.decode() if isinstance(key, bytes) else str(key)).removeprefix(prefix)
        beats.append(WorkerBeat(name, at, facts))
    return sorted(beats, key=lambda b: b.at, reverse=True)
