"""Four workers at once on one Chroma server, PostgreSQL and Redis, one of them SIGKILLed at
random moments and started again, while they work through a backlog with repeated texts.

The invariants of the decision section under that load: every ticket is decided exactly
once (0 lost, 0 doubled), every vector is stored, and the decisions are those of processing
the tickets one at a time: of each group of identical texts (the fake embedder's vectors are
hashes of the text, so only identical texts are twins), the first decided is not a duplicate
and every later one is a duplicate of an earlier-decided twin; no two tickets name each other.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from tests.conftest import WorkerProcess
from tests.faults.conftest import FaultEnv, StartWorker, assert_nothing_lost
from tests.faults.harness import make_tickets, report, scale, tally, wait_settled, wait_until
from tickets.db import DecisionRow

N_WORKERS = 4
# Four workers decide about 30 tickets/s here: enough backlog for every kill to land mid-run.
N_TICKETS, N_KILLS = scale((1500, 4), (10000, 20))
RECOVERY_BOUND_S = 120


@pytest.mark.timeout(scale(420, 1800))
def test_four_workers_under_sigkill_decide_as_one_at_a_time(
    fault_env: FaultEnv, start_worker: StartWorker
) -> None:
    settings = fault_env.settings()
    tickets = make_tickets(N_TICKETS, seed=11)
    text_of = {t.ticket_id: t.body for t in tickets}
    rng = random.Random(20261205)
    # All four ready before the backlog arrives, and replacements not waited for: under a
    # loaded machine a worker's start-up would otherwise outlast the backlog.
    workers: list[WorkerProcess] = [start_worker(settings) for _ in range(N_WORKERS)]
    sent = fault_env.publish(settings, tickets, per_message=1)
    started = time.monotonic()
    points = sorted(rng.randrange(N_TICKETS // 10, N_TICKETS * 6 // 10) for _ in range(N_KILLS))
    kills_mid_run = 0
    for point in points:
        wait_until(
            lambda p=point: tally(fault_env.engine, sent).accounted >= p, 120, f"{point} done"
        )
        time.sleep(rng.uniform(0.0, 0.3))
        running = [w for w in workers if w.proc.poll() is None]
        victim = rng.choice(running)
        before = tally(fault_env.engine, sent).accounted
        victim.proc.kill()
        victim.proc.wait(10)
        kills_mid_run += before < N_TICKETS
        print(f"kill: {before}/{N_TICKETS} accounted for at the kill")
        workers.append(start_worker(settings, ready=False))  # the restart policy's replacement
    fault_end = time.monotonic()
    recovery_s = wait_settled(
        fault_env.engine,
        sent,
        fault_env.queue_depth,
        settings.visibility_timeout_s + 5,
        RECOVERY_BOUND_S + 60,
    )
    wait_until(lambda: fault_env.queue_depth() == 0, 60, "the queue to drain")
    result = tally(fault_env.engine, sent)
    vectors = fault_env.chroma.count(settings.chroma_collection)

    with Session(fault_env.engine) as session:
        rows = list(session.scalars(select(DecisionRow).order_by(DecisionRow.id)))
    order = {r.ticket_id: i for i, r in enumerate(rows)}
    groups: dict[str, list[DecisionRow]] = defaultdict(list)
    for row in rows:
        groups[text_of[row.ticket_id]].append(row)
    wrong = []
    for twins in groups.values():
        first, *later = twins  # in decision order
        if first.route == "duplicate":
            wrong.append(f"{first.ticket_id}: first of its text, routed duplicate")
        for row in later:
            match = row.matched_ticket_id
            if (
                row.route != "duplicate"
                or match is None
                or text_of[match] != text_of[row.ticket_id]
            ):
                wrong.append(f"{row.ticket_id}: {row.route} of {match}, a twin decided earlier")
            elif order[match] > order[row.ticket_id]:
                wrong.append(f"{row.ticket_id}: matched {match}, decided after it")
    match_of = {r.ticket_id: r.matched_ticket_id for r in rows if r.route == "duplicate"}
    both_ways = [(a, b) for a, b in match_of.items() if b is not None and match_of.get(b) == a]
    report(
        f"{N_WORKERS} workers, one SIGKILLed at a time",
        result,
        recovery_s,
        workers=N_WORKERS,
        kills=N_KILLS,
        kills_mid_run=kills_mid_run,
        twin_groups=sum(1 for g in groups.values() if len(g) > 1),
        repeats=sum(len(g) - 1 for g in groups.values()),
        wrong_routes=len(wrong),
        both_ways=len(both_ways),
        vectors=vectors,
        total_s=round(fault_end - started, 1),
    )
    assert result.doubled == 0 and result.failed == 0, result
    assert kills_mid_run == N_KILLS, "a kill came after the backlog was done: tested nothing"
    assert vectors == result.decided
    assert wrong == [], wrong[:10]
    assert both_ways == []
    assert sum(len(g) - 1 for g in groups.values()) > 0, "no repeated text: nothing tested"
    assert recovery_s < RECOVERY_BOUND_S, f"recovery took {recovery_s:.0f} s"
    assert_nothing_lost(result, fault_env, sent, workers)
