"""The decision section's snapshot and catch-up, with real workers on a Chroma server,
PostgreSQL and Redis (tests/hooks/ stops or kills a worker at a section's hook point).

- A worker ranks its batch on a snapshot taken outside the lock. Another worker decides a
  twin between that snapshot and the lock: the first must still find it (the catch-up
  reads the tickets committed since the snapshot from SQL, vectors included).
- A worker killed between its SQL commit and its vector upsert loses nothing: the next
  batch finds the decided ticket in SQL (its vector kept there), and the vector reaches the
  store again (re-stored from SQL by a later batch, or by the redelivery).
"""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.faults.conftest import FaultEnv, StartWorker
from tests.faults.harness import tally, wait_until
from tickets import db
from tickets.model import Ticket

TWIN_TEXT = "Since the last update the mobile app logs me out every time I open my invoices"


def _decisions(fault_env: FaultEnv) -> dict[str, db.DecisionRow]:
    with Session(fault_env.engine) as s:
        return {d.ticket_id: d for d in s.scalars(select(db.DecisionRow))}


def _ticket(fault_env: FaultEnv, ticket_id: str) -> db.TicketRow | None:
    with Session(fault_env.engine) as s:
        return s.scalars(select(db.TicketRow).where(db.TicketRow.ticket_id == ticket_id)).first()


def _indexed(fault_env: FaultEnv, ticket_id: str) -> bool:
    row = _ticket(fault_env, ticket_id)
    return row is not None and row.indexed_at is not None


@pytest.mark.timeout(300)
def test_a_twin_decided_after_the_snapshot_is_caught_up(
    fault_env: FaultEnv, start_worker: StartWorker
) -> None:
    settings_a = fault_env.settings(queue=f"{fault_env.queue}-a")
    settings_b = fault_env.settings(queue=f"{fault_env.queue}-b")
    worker_a = start_worker(
        settings_a, extra_env=fault_env.hooks(after_snapshot={"ticket": "X", "action": "pause"})
    )
    worker_b = start_worker(settings_b)
    sent = fault_env.publish(settings_a, [Ticket(source="snap", ticket_id="X", body=TWIN_TEXT)])
    # A has ranked X on its snapshot (nothing stored yet) and waits before the lock.
    fault_env.wait_hook("after_snapshot")
    sent += fault_env.publish(settings_b, [Ticket(source="snap", ticket_id="X2", body=TWIN_TEXT)])
    wait_until(lambda: "X2" in _decisions(fault_env), 60, "worker B's decision of X2")
    # B's vector is in the store by now too: only SQL tells A about it, as the catch-up
    # reads it, the store having been queried before.
    wait_until(lambda: fault_env.chroma.count("tickets") == 1, 30, "X2's vector")
    fault_env.release_hook("after_snapshot")
    wait_until(lambda: "X" in _decisions(fault_env), 60, "worker A's decision of X")

    rows = _decisions(fault_env)
    x, x2 = rows["X"], rows["X2"]
    assert x2.route == "manual" and x2.matches == []
    assert (x.route, x.matched_ticket_id, x.canonical_ticket_id) == ("duplicate", "X2", "X2")
    assert x.score is not None and x.score > 0.99 and x2.id < x.id
    result = tally(fault_env.engine, sent)
    assert (result.decided, result.failed, result.doubled) == (2, 0, 0), result
    # Decided in one pass: no lost lock, no retry.
    assert "retry: Retry in" not in worker_a.log(), worker_a.log()[-3000:]
    wait_until(lambda: fault_env.chroma.count("tickets") == 2, 30, "X's vector")
    assert worker_b.proc.poll() is None


@pytest.mark.timeout(300)
def test_a_kill_between_commit_and_upsert_loses_nothing(
    fault_env: FaultEnv, start_worker: StartWorker
) -> None:
    settings = fault_env.settings()
    first = start_worker(
        settings, extra_env=fault_env.hooks(after_commit={"ticket": "K", "action": "kill"})
    )
    sent = fault_env.publish(settings, [Ticket(source="crash", ticket_id="K", body=TWIN_TEXT)])
    assert first.proc.wait(60) == -9  # killed itself right after its commit
    row = _ticket(fault_env, "K")
    assert row is not None and "K" in _decisions(fault_env)
    # Decided, its vector kept in SQL and missing from the store.
    assert row.vector is not None and row.indexed_at is None
    assert fault_env.chroma.count("tickets") == 0

    second = start_worker(settings)
    sent += fault_env.publish(settings, [Ticket(source="crash", ticket_id="K2", body=TWIN_TEXT)])
    wait_until(lambda: "K2" in _decisions(fault_env), 60, "K2's decision")
    k2 = _decisions(fault_env)["K2"]
    assert (k2.route, k2.matched_ticket_id, k2.canonical_ticket_id) == ("duplicate", "K", "K")
    # K's vector reaches the store again (a later batch, or K's redelivery, re-stores it
    # from SQL), and K is not decided twice.
    wait_until(lambda: fault_env.chroma.count("tickets") == 2, 60, "K's vector re-stored")
    # Marked indexed in SQL just after its upsert (a separate statement): waited for, as a
    # read right after the count may fall between the two.
    wait_until(lambda: _indexed(fault_env, "K"), 30, "K marked indexed")
    wait_until(lambda: fault_env.queue_depth() == 0, 60, "K's redelivery")
    result = tally(fault_env.engine, sent)
    assert (result.decided, result.lost, result.doubled) == (2, 0, 0), result
    assert second.proc.poll() is None
