"""The embedding service (Ollama; here the local fake that answers like it) down, slow, busy
(503) and answering garbage. Every failing batch is retried per ticket with backoff; once
the service is good again everything is decided: nothing dead-lettered, lost or doubled.

Retry budget: TRIAGE_MAX_RETRIES=10 with the backoff capped at 10 s rides out about 90 s
of outage (the production defaults, 10 retries capped at 60 s, about 9 minutes).
Recovery bound: one backoff cap (10 s) + the client's own attempts + the backlog.
"""

from __future__ import annotations

import math
import time

import pytest

from tests.faults.conftest import FaultEnv, StartWorker
from tests.faults.harness import make_tickets, report, scale, tally, wait_until
from tests.ollama_fake import Fault

N_TICKETS = scale(200, 1000)
DOWN_S = scale(20.0, 60.0)
RECOVERY_BOUND_S = 45


def _garbage() -> list[Fault]:
    nan = Fault.transform_rows(lambda row: [math.nan, *row[1:]])
    return [
        Fault.malformed_json(),
        Fault.wrong_count(-1),
        Fault.wrong_dimension(100),
        Fault.answer({"embeddings": "yes"}),
        Fault.raw(b"<html>proxy error page</html>"),
        nan,
    ] * scale(2, 5)


FAULTS = {
    "503": lambda: [Fault.busy()] * scale(24, 80),
    "slow": lambda: [Fault.slow(4.0)] * scale(8, 24),
    "garbage": _garbage,
}


def _run(fault_env: FaultEnv, start_worker: StartWorker, kind: str) -> None:
    # A timeout that a slow answer exceeds; a backoff cap that lets 10 retries span the outage.
    settings = fault_env.settings(
        ollama_timeout_s=1.5, visibility_timeout_s=30, retry_backoff_max_s=10
    )
    proxy = None
    if kind == "down":
        proxy = fault_env.proxy(int(fault_env.ollama.url.rsplit(":", 1)[1]))
        settings = fault_env.settings(
            ollama_url=f"http://127.0.0.1:{proxy.port}",
            ollama_timeout_s=1.5,
            visibility_timeout_s=30,
            retry_backoff_max_s=10,
        )
    worker = start_worker(settings)
    tickets = make_tickets(N_TICKETS)
    first, rest = tickets[: N_TICKETS // 4], tickets[N_TICKETS // 4 :]
    sent = fault_env.publish(settings, first)
    wait_until(lambda: tally(fault_env.engine, sent).decided > 0, 60, "progress")
    started = time.monotonic()
    # The fault starts; the rest of the tickets arrive during it (the queue grows).
    if proxy is not None:
        proxy.cut()
        sent += fault_env.publish(settings, rest)
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - started)))
        proxy.restore()
    else:
        fault_env.ollama.push(*FAULTS[kind]())
        sent += fault_env.publish(settings, rest)
        wait_until(lambda: fault_env.ollama.pending_faults == 0, 300, "the faults to be served")
    fault_end = time.monotonic()
    result, recovery_s = fault_env.recover(sent, fault_end, RECOVERY_BOUND_S)
    report(
        f"embedder {kind}",
        result,
        recovery_s,
        fault_s=round(fault_end - started, 1),
        retries=worker.log().count(" retry "),
    )
    assert result.lost == 0 and result.doubled == 0, result
    assert result.failed == 0, result  # within the retry budget nothing is dead-lettered
    assert " retry " in worker.log(), "the fault never reached a ticket: it tested nothing"
    assert recovery_s < RECOVERY_BOUND_S, f"recovery took {recovery_s:.0f} s"


@pytest.mark.timeout(scale(300, 900))
def test_embedder_down(fault_env: FaultEnv, start_worker: StartWorker) -> None:
    _run(fault_env, start_worker, "down")


@pytest.mark.timeout(scale(300, 900))
@pytest.mark.parametrize("kind", ["503", "slow", "garbage"])
def test_embedder_misbehaves(fault_env: FaultEnv, start_worker: StartWorker, kind: str) -> None:
    _run(fault_env, start_worker, kind)
