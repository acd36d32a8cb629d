"""TRIAGE_MATCH_SCOPE=queue with real workers on a Chroma server, PostgreSQL and Redis:
twins in different queues are never matched, twins in one queue are, whichever worker
decides them; and two queues decide at the same time, each under its own lock (worker A
is stopped inside queue alpha's section, holding its lock, while worker B decides a ticket
of queue beta)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.faults.conftest import FaultEnv, StartWorker
from tests.faults.harness import tally, wait_until
from tickets import db
from tickets.model import Ticket
from worker.pipeline import DECISION_LOCK, scope_lock_name

TEXT = "After the last update the export to PDF button does nothing in the reports page"


def _decisions(fault_env: FaultEnv) -> dict[str, db.DecisionRow]:
    with Session(fault_env.engine) as s:
        return {d.ticket_id: d for d in s.scalars(select(db.DecisionRow))}


def _lock_key(queue: str) -> str:
    """The Redis key of a queue scope's lock (worker/decision_lock.py DecisionLock.key)."""
    return f"triage:decide:{scope_lock_name('queue', queue)}"


@pytest.mark.timeout(300)
def test_queues_match_apart_and_decide_in_parallel(
    fault_env: FaultEnv, start_worker: StartWorker
) -> None:
    settings_a = fault_env.settings(queue=f"{fault_env.queue}-a", match_scope="queue")
    settings_b = fault_env.settings(queue=f"{fault_env.queue}-b", match_scope="queue")
    worker_a = start_worker(
        settings_a, extra_env=fault_env.hooks(in_section={"ticket": "alpha-1", "action": "pause"})
    )
    start_worker(settings_b)
    redis = fault_env.redis.client()

    sent = fault_env.publish(
        settings_a, [Ticket(source="scope", ticket_id="alpha-1", body=TEXT, queue="alpha")]
    )
    fault_env.wait_hook("in_section")  # A holds alpha's lock, inside its section
    assert redis.exists(_lock_key("alpha")) == 1
    sent += fault_env.publish(
        settings_b, [Ticket(source="scope", ticket_id="beta-1", body=TEXT, queue="beta")]
    )
    wait_until(lambda: "beta-1" in _decisions(fault_env), 60, "beta-1 decided by B")
    # B's section ran while A held alpha's: the two scopes' sections overlapped.
    assert redis.exists(_lock_key("alpha")) == 1 and "alpha-1" not in _decisions(fault_env)
    assert redis.exists(f"triage:decide:{DECISION_LOCK}") == 0  # nobody took the global one
    fault_env.release_hook("in_section")
    wait_until(lambda: "alpha-1" in _decisions(fault_env), 60, "alpha-1 decided by A")

    # The same text in another queue is no match; in the same queue it is, across workers.
    sent += fault_env.publish(
        settings_b, [Ticket(source="scope", ticket_id="alpha-2", body=TEXT, queue="alpha")]
    )
    wait_until(lambda: "alpha-2" in _decisions(fault_env), 60, "alpha-2 decided")
    rows = _decisions(fault_env)
    assert rows["alpha-1"].route == "manual" and rows["alpha-1"].matches == []
    assert rows["beta-1"].route == "manual" and rows["beta-1"].matches == []
    alpha_2 = rows["alpha-2"]
    assert (alpha_2.route, alpha_2.matched_ticket_id) == ("duplicate", "alpha-1")
    assert {m["ticket_id"] for m in alpha_2.matches} == {"alpha-1"}
    result = tally(fault_env.engine, sent)
    assert (result.decided, result.failed, result.doubled) == (3, 0, 0), result
    # Each scope took its own fence row.
    with Session(fault_env.engine) as s:
        fences = {r.name: r.token for r in s.scalars(select(db.DecisionFenceRow))}
    assert fences[scope_lock_name("queue", "alpha")] >= 2
    assert fences[scope_lock_name("queue", "beta")] >= 1
    assert worker_a.proc.poll() is None
