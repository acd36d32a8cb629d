"""A worker that loses the decision lock mid-section must not commit what it decided.

Two workers share a Chroma server, PostgreSQL and Redis. Worker A takes the lock for a
batch holding ticket X and reads what was decided; it is then paused (SIGSTOP) past the
lock's TTL. Worker B takes the expired lock and decides X's twin X2, seeing nothing of X.
When A resumes, its view is stale: committing it would route X and X2 both as originals
(the missing link). The fence (worker/decision_lock.py) makes A give its batch back;
retried, X is decided on a fresh view as X2's duplicate: the twins link one way.

The pause lands where it matters: A stops at the section's hook point inside the lock
(tests/hooks/), and is stopped there with SIGSTOP, renewal thread and all.
"""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.faults.conftest import FaultEnv, StartWorker
from tests.faults.harness import tally, wait_until
from tickets import db
from tickets.model import Ticket
from worker.pipeline import DECISION_LOCK

LOCK_KEY = f"triage:decide:{DECISION_LOCK}"
TTL_S = 2.0
TWIN_TEXT = "The invoice PDF for order 7741 shows the wrong billing address since Monday"


def _decisions(fault_env: FaultEnv) -> dict[str, db.DecisionRow]:
    with Session(fault_env.engine) as s:
        return {d.ticket_id: d for d in s.scalars(select(db.DecisionRow))}


def _fence(fault_env: FaultEnv) -> int:
    with Session(fault_env.engine) as s:
        row = s.get(db.DecisionFenceRow, DECISION_LOCK)
        return 0 if row is None else row.token


@pytest.mark.timeout(300)
def test_a_section_that_lost_its_lock_gives_its_batch_back(
    fault_env: FaultEnv, start_worker: StartWorker
) -> None:
    settings_a = fault_env.settings(queue=f"{fault_env.queue}-a", decision_lock_ttl_s=TTL_S)
    settings_b = fault_env.settings(queue=f"{fault_env.queue}-b", decision_lock_ttl_s=TTL_S)
    worker_a = start_worker(
        settings_a, extra_env=fault_env.hooks(in_section={"ticket": "X", "action": "pause"})
    )
    worker_b = start_worker(settings_b)
    # Each worker decides a first ticket: clients connected, indexes loaded.
    warm = [
        fault_env.publish(settings, [Ticket(source="lock", ticket_id=f"warm-{n}", body=text)])
        for n, (settings, text) in enumerate(
            ((settings_a, "Cannot log in with SSO"), (settings_b, "Dark mode toggle missing"))
        )
    ]
    wait_until(lambda: tally(fault_env.engine, warm[0] + warm[1]).decided == 2, 60, "warm-up")
    redis = fault_env.redis.client()
    wait_until(lambda: redis.exists(LOCK_KEY) == 0, 30, "the warm-up sections to end")
    claimed = _fence(fault_env)

    sent = fault_env.publish(settings_a, [Ticket(source="lock", ticket_id="X", body=TWIN_TEXT)])
    # A holds the lock, has claimed the fence and read what was decided: stop it there.
    fault_env.wait_hook("in_section")
    assert redis.exists(LOCK_KEY) == 1 and _fence(fault_env) == claimed + 1
    os.kill(worker_a.proc.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: redis.exists(LOCK_KEY) == 0, 10 * TTL_S, "A's lock to expire")
        sent += fault_env.publish(
            settings_b, [Ticket(source="lock", ticket_id="X2", body=TWIN_TEXT)]
        )
        wait_until(lambda: "X2" in _decisions(fault_env), 60, "worker B's decision of X2")
    finally:
        fault_env.release_hook("in_section")
        os.kill(worker_a.proc.pid, signal.SIGCONT)
    wait_until(lambda: "X" in _decisions(fault_env), 60, "worker A's decision of X")

    rows = _decisions(fault_env)
    x, x2 = rows["X"], rows["X2"]
    # X2 was decided first, with nothing of X anywhere; X, decided again after its lost
    # section, links to X2. One way: never both originals, never each other's duplicate.
    assert x2.route == "manual" and "X" not in {m["ticket_id"] for m in x2.matches}, x2.matches
    assert (x.route, x.matched_ticket_id, x.canonical_ticket_id) == ("duplicate", "X2", "X2")
    assert x2.id < x.id
    result = tally(fault_env.engine, sent)
    assert (result.decided, result.failed, result.doubled) == (2, 0, 0), result
    # two warm-up tickets and the twins; the vectors follow the commits
    wait_until(lambda: fault_env.chroma.count("tickets") == 4, 30, "the vectors")
    # A's lost section raised DecisionLockLost (its renewal saw the lock gone, or the fence
    # was claimed) and its ticket was retried; B's never did.
    assert "retry: Retry in" in worker_a.log() and "DecisionLockLost" in worker_a.log(), (
        worker_a.log()[-3000:]
    )
    assert "DecisionLockLost" not in worker_b.log()
    # Claimed by A's lost section, B's, and A's retry.
    assert _fence(fault_env) >= claimed + 3
