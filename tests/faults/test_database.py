"""PostgreSQL unavailable for a while: the worker reaches it through a TCP proxy the test
cuts (open connections die, new ones are refused) and restores. Batches fail with
StoreUnavailable and are retried per ticket with backoff; a failure row cannot be written
either, so dead-lettering retries too. Nothing is acked without its row.

Recovery bound: one backoff cap (10 s) + the pool's reconnect (pool_pre_ping) + the backlog.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import make_url

from tests.faults.conftest import FaultEnv, StartWorker, unchanged_redeliveries
from tests.faults.harness import make_tickets, report, scale, tally, wait_until

N_TICKETS = scale(300, 1000)
DOWN_S = scale(15.0, 60.0)
RECOVERY_BOUND_S = 45


@pytest.mark.timeout(scale(300, 900))
def test_database_unavailable(fault_env: FaultEnv, start_worker: StartWorker) -> None:
    url = make_url(fault_env.pg_url)
    proxy = fault_env.proxy(url.port or 5432)
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = fault_env.settings(
        database_url=via_proxy, visibility_timeout_s=30, retry_backoff_max_s=10
    )
    worker = start_worker(settings)
    tickets = make_tickets(N_TICKETS)
    sent = fault_env.publish(settings, tickets[: N_TICKETS // 4])
    wait_until(lambda: tally(fault_env.engine, sent).decided > 0, 60, "progress")
    started = time.monotonic()
    proxy.cut()
    sent += fault_env.publish(settings, tickets[N_TICKETS // 4 :])
    time.sleep(max(0.0, DOWN_S - (time.monotonic() - started)))
    proxy.restore()
    fault_end = time.monotonic()
    result, recovery_s = fault_env.recover(sent, fault_end, RECOVERY_BOUND_S)
    vectors = fault_env.chroma.count("tickets")
    report(
        "database unavailable",
        result,
        recovery_s,
        down_s=DOWN_S,
        retries=worker.log().count(" retry "),
        redelivered_unchanged=unchanged_redeliveries([worker]),
        vectors=vectors,
    )
    assert result.lost == 0 and result.doubled == 0, result
    assert result.failed == 0, result
    assert " retry " in worker.log(), "the outage never reached a ticket: it tested nothing"
    assert vectors == result.decided
    assert recovery_s < RECOVERY_BOUND_S, f"recovery took {recovery_s:.0f} s"
