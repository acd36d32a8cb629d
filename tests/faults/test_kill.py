"""SIGKILL of the worker at random moments while it works through a backlog.

With acks_late a killed worker's messages stay unacked in Redis and come back after the
visibility timeout; the pipeline's writes are keyed by (source, ticket_id), so a batch
that was written but not acked is absorbed on redelivery, never decided twice.
Recovery bound: visibility timeout (8 s) + restore sweep (1 s) + the backlog's own time.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.conftest import WorkerProcess
from tests.faults.conftest import (
    FaultEnv,
    StartWorker,
    assert_nothing_lost,
    unchanged_redeliveries,
)
from tests.faults.harness import (
    make_tickets,
    report,
    scale,
    tally,
    wait_settled,
    wait_until,
)

N_TICKETS, N_KILLS = scale((300, 5), (2000, 20))
RECOVERY_BOUND_S = 120


@pytest.mark.timeout(scale(300, 1800))
# 1: one ticket per message (webhooks); 32: grouped messages (file ingest's default).
@pytest.mark.parametrize("per_message", [1, 32])
def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    fault_env: FaultEnv, start_worker: StartWorker, per_message: int
) -> None:
    settings = fault_env.settings()
    # Grouped messages go through a worker several times faster: a longer backlog and a
    # shorter random delay keep every kill inside the run.
    n = N_TICKETS * (1 if per_message == 1 else 4)
    max_delay_s = 0.3 if per_message == 1 else 0.05
    tickets = make_tickets(n)
    sent = fault_env.publish(settings, tickets, per_message)
    rng = random.Random(20261127)
    # Random kill points spread over the run (by tickets done), each shifted by a random
    # fraction of a batch: mid-embedding, mid-write, between the SQL write and the ack.
    points = sorted(rng.randrange(n // 20, n * 9 // 10) for _ in range(N_KILLS))
    workers: list[WorkerProcess] = []
    kills_mid_run = 0
    for point in points:
        worker = start_worker(settings)
        workers.append(worker)
        done = tally(fault_env.engine, sent).accounted
        target = max(point, done + 1)
        wait_until(
            lambda t=target: tally(fault_env.engine, sent).accounted >= t, 90, f"{target} done"
        )
        time.sleep(rng.uniform(0.0, max_delay_s))
        before = tally(fault_env.engine, sent).accounted
        worker.proc.kill()
        worker.proc.wait(10)
        kills_mid_run += before < n
        print(f"kill {len(workers)}: {before}/{n} accounted for at the kill")

    started = time.monotonic()
    workers.append(start_worker(settings))
    # The last kill's unacked tickets come back after the visibility timeout: a quiet
    # broker for longer than that means whatever is still missing is gone.
    recovery_s = wait_settled(
        fault_env.engine,
        sent,
        fault_env.queue_depth,
        settings.visibility_timeout_s + 5,
        RECOVERY_BOUND_S + 60,
    )
    # Redeliveries of already-decided tickets may still be in flight: let them drain.
    wait_until(lambda: fault_env.queue_depth() == 0, 60, "the queue to drain")
    result = tally(fault_env.engine, sent)
    vectors = fault_env.chroma.count(settings.chroma_collection)
    report(
        "worker SIGKILL" + ("" if per_message == 1 else f", {per_message} tickets per message"),
        result,
        recovery_s,
        kills=N_KILLS,
        kills_mid_run=kills_mid_run,
        redelivered_unchanged=unchanged_redeliveries(workers),
        vectors=vectors,
        total_s=round(time.monotonic() - started, 1),
    )
    assert result.doubled == 0 and result.failed == 0, result
    assert kills_mid_run == N_KILLS, "a kill came after the backlog was done: test nothing"
    assert vectors == result.decided  # no vector lost, no phantom
    assert recovery_s < RECOVERY_BOUND_S, f"recovery took {recovery_s:.0f} s"
    assert_nothing_lost(result, fault_env, sent, workers)
