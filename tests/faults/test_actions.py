"""Outbound webhooks through a receiver outage and SIGKILLs of the delivering worker.

N decisions must become N deliveries: one ``webhook-id`` per decision at the receiver (a
re-send after a kill mid-delivery carries the same id, never a new one), every signature
valid per the reference library. A kill leaves its action ``sending`` until its lease
(2 × 2 s timeout + 5 s) runs out and its message unacked until the visibility timeout; the
sweeper then publishes it again. The outage fails attempts, which back off (capped at 4 s
here) and go through once the receiver is back.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from tests.faults.conftest import FaultEnv, Supervisor
from tests.faults.harness import (
    actions_settled,
    make_tickets,
    report,
    scale,
    tally,
    wait_until,
)
from tests.receiver import SECRET, Answer, Receiver
from tickets.outbox import ActionRow

N_DECISIONS, N_KILLS, DOWN_S = scale((150, 3, 15), (1000, 10, 60))
RECOVERY_BOUND_S = 120


@pytest.mark.timeout(scale(600, 1800))
def test_outage_and_kills_lose_no_delivery_and_send_none_under_two_ids(
    fault_env: FaultEnv, supervise: Callable[[Settings], Supervisor]
) -> None:
    receiver = Receiver(SECRET)
    # A slow receiver and a few deliveries at a time per worker: deliveries are in flight
    # when a kill comes.
    receiver.default = Answer(delay_s=0.25)
    try:
        settings = fault_env.settings(
            outbound_webhook_url=receiver.url,
            outbound_webhook_secret=SECRET,
            actions_timeout_s=2,
            actions_sweep_s=0.5,
            actions_backoff_max_s=4,
            actions_concurrency=scale(2, 4),
        )
        sent = fault_env.publish(settings, make_tickets(N_DECISIONS))
        supervisor = supervise(settings)
        wait_until(lambda: len(receiver.all()) > 0, 120, "the first delivery")
        # First the outage (every decision's first attempts fail), then kills while the
        # backlog of retries is being delivered, spread over it.
        started = time.monotonic()
        kills, in_flight_kills = supervisor.kill_through(
            N_KILLS,
            lambda: len(receiver.delivered()),
            N_DECISIONS // (3 * N_KILLS),
            (receiver.stop, receiver.start, DOWN_S),
        )
        fault_end = time.monotonic()

        wait_until(
            lambda: actions_settled(fault_env.engine, N_DECISIONS),
            RECOVERY_BOUND_S + 60,
            "every action delivered",
        )
        recovery_s = time.monotonic() - fault_end
        with Session(fault_env.engine) as session:
            rows = list(session.scalars(select(ActionRow)))
        result = tally(fault_env.engine, sent)
        got = receiver.all()
        ids_per_decision: dict[tuple[str, str], set[str]] = defaultdict(set)
        for request in got:
            body = receiver.verify(request)  # raises on any invalid signature
            ids_per_decision[(body["source"], body["ticket_id"])].add(request.headers["webhook-id"])
        delivered_ids = {r.headers["webhook-id"] for r in receiver.delivered()}
        resent = len(receiver.delivered()) - len(delivered_ids)
        report(
            "outbound webhook: receiver down, worker SIGKILL",
            result,
            recovery_s,
            decisions=N_DECISIONS,
            kills=kills,
            kills_mid_delivery=in_flight_kills,
            outage_s=DOWN_S,
            requests=len(got),
            delivered_requests=len(receiver.delivered()),
            resent_same_id=resent,
            max_attempts=max(r.attempts for r in rows),
            total_s=round(time.monotonic() - started, 1),
        )
        assert result.decided == N_DECISIONS and result.lost == 0, result
        assert {r.action_id for r in rows} == delivered_ids, "an action not delivered"
        assert len(ids_per_decision) == N_DECISIONS
        assert all(len(ids) == 1 for ids in ids_per_decision.values()), "a decision, two ids"
        assert recovery_s < RECOVERY_BOUND_S, f"recovery took {recovery_s:.0f} s"
        assert any(r.attempts > 1 for r in rows), "no attempt failed: the outage tested nothing"
    finally:
        receiver.stop()
