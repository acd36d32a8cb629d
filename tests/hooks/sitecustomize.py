"""Fault injection at the decision section's hook points, in real worker processes.

A test starts a worker with ``PYTHONPATH`` pointing here and ``SECTION_HOOKS`` set to JSON:
``{"redis": URL, "after_snapshot" | "in_section" | "after_commit": {"ticket": ID, "action":
"pause" | "kill"}}``. Python imports this module at start-up; it wraps the worker's runtime
builder so that its Services carry hooks (worker/pipeline.py ``SectionHooks``) acting when
a batch part holds ticket ID:

- ``pause``: sets the Redis key ``hook:<point>:reached``, then waits for ``hook:<point>:go``;
- ``kill``: SIGKILL of the worker process itself, at that very point.

Each hook acts once per process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

SPEC = os.environ.get("SECTION_HOOKS")


def _install(spec: dict[str, Any]) -> None:
    import redis

    from worker import runtime
    from worker.pipeline import SectionHooks

    client = redis.Redis.from_url(spec["redis"])
    build = runtime.build_runtime

    def hook(point: str, ticket: str, action: str) -> Any:
        done = False

        def act(keys: list[Any]) -> None:
            nonlocal done
            if done or all(k.ticket_id != ticket for k in keys):
                return
            done = True
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            client.set(f"hook:{point}:reached", "1")
            deadline = time.monotonic() + 300
            while not client.exists(f"hook:{point}:go") and time.monotonic() < deadline:
                time.sleep(0.05)

        return act

    def build_with_hooks(settings: Any) -> Any:
        built = build(settings)
        points = {
            p: hook(p, s["ticket"], s["action"])
            for p, s in spec.items()
            if p in ("after_snapshot", "in_section", "after_commit")
        }
        built.services.hooks = SectionHooks(**points)
        return built

    runtime.build_runtime = build_with_hooks  # type: ignore[assignment]


if SPEC:
    _install(json.loads(SPEC))
