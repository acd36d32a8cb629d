"""Redis faults: connections dropped (CLIENT KILL, and a cut TCP path) and a Redis restart
with AOF. The worker reconnects by itself; unacked messages come back after the visibility
timeout; with AOF a restarted Redis still holds its queue and its unacked messages.

Recovery bound: reconnect (Celery retries at once, then every 2 s) + visibility timeout (8 s)
+ restore sweep (1 s) + the backlog's own time; asserted under RECOVERY_BOUND_S.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FaultEnv, StartWorker, unchanged_redeliveries
from tests.faults.harness import (
    make_tickets,
    report,
    scale,
    tally,
    wait_until,
)
from worker.tickets import TicketKey

RECOVERY_BOUND_S = 90
N_TICKETS = scale(300, 1000)


def _finish(
    fault_env: FaultEnv, sent: list, scenario: str, fault_end: float, workers: list, **extra: object
) -> None:
    result, recovery_s = fault_env.recover(sent, fault_end, RECOVERY_BOUND_S)
    vectors = fault_env.chroma.count("tickets")
    report(
        scenario,
        result,
        recovery_s,
        redelivered_unchanged=unchanged_redeliveries(workers),
        vectors=vectors,
        **extra,
    )
    assert result.lost == 0 and result.doubled == 0, result
    assert result.failed == 0, result
    assert vectors == result.decided
    assert recovery_s < RECOVERY_BOUND_S, f"recovery took {recovery_s:.0f} s"


@pytest.mark.timeout(scale(300, 900))
def test_redis_connections_dropped(fault_env: FaultEnv, start_worker: StartWorker) -> None:
    # The worker reaches Redis through a proxy the test cuts: established connections die
    # and new ones are refused for a while. CLIENT KILL on top, between the cuts.
    proxy = fault_env.proxy(fault_env.redis.port)
    settings = fault_env.settings(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    sent = fault_env.publish(fault_env.settings(), make_tickets(N_TICKETS))
    worker = start_worker(settings)
    cuts, cut_s = scale((2, 5.0), (4, 15.0))
    admin = fault_env.redis.client()
    killed = 0
    for _ in range(cuts):
        wait_until(lambda: tally(fault_env.engine, sent).decided > 0, 60, "progress")
        killed += int(admin.client_kill_filter(_type="normal", skipme=True))
        time.sleep(0.5)
        proxy.cut()
        time.sleep(cut_s)
        proxy.restore()
        time.sleep(1.0)
    fault_end = time.monotonic()
    admin.close()
    _finish(
        fault_env,
        sent,
        "Redis connections dropped",
        fault_end,
        [worker],
        cuts=cuts,
        cut_s=cut_s,
        client_kills=killed,
    )


@pytest.mark.timeout(scale(300, 900))
def test_redis_restarted_with_aof(fault_env: FaultEnv, start_worker: StartWorker) -> None:
    settings = fault_env.settings()
    worker = start_worker(settings)
    restarts, down_s = scale((1, 3.0), (3, 10.0))
    tickets = make_tickets(N_TICKETS)
    share = N_TICKETS // restarts
    sent: list[TicketKey] = []
    for i in range(restarts):
        # Each restart hits a fresh backlog: part of it decided, the rest queued or unacked.
        part = tickets[i * share : None if i == restarts - 1 else (i + 1) * share]
        done = tally(fault_env.engine, sent).accounted
        sent += fault_env.publish(settings, part)
        wait_until(
            lambda d=done, s=sent: tally(fault_env.engine, s).accounted > d + 20, 60, "progress"
        )
        # SIGKILL: no shutdown save; the queue and the unacked messages must come back from
        # the AOF alone (appendfsync everysec, as in docker-compose).
        fault_env.redis.kill()
        time.sleep(down_s)
        fault_env.redis.start()
    fault_end = time.monotonic()
    _finish(
        fault_env,
        sent,
        "Redis restarted (AOF)",
        fault_end,
        [worker],
        restarts=restarts,
        down_s=down_s,
    )
