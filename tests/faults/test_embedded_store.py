"""A second process opening the embedded Chroma store while a worker owns it: refused at
once with the reason and the fix (two processes on one PersistentClient path silently lose
vectors: measured with chromadb 1.5.9, and Chroma's docs advise one client per path), and the
owner loses nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, settings_env
from tests.faults.conftest import FaultEnv, StartWorker
from tests.faults.harness import make_tickets, report, tally, wait_accounted, wait_until
from tickets.errors import StoreLocked
from worker.embedding import make_embedder
from worker.store import open_store, opened_store

N_TICKETS = 300


def test_second_process_on_the_embedded_store_is_refused(
    fault_env: FaultEnv, start_worker: StartWorker
) -> None:
    settings = fault_env.settings(chroma_url=None)
    owner = start_worker(settings)
    tickets = make_tickets(N_TICKETS)
    sent = fault_env.publish(settings, tickets[:100])
    wait_until(lambda: tally(fault_env.engine, sent).decided > 0, 60, "progress")

    # A second worker on the same path, while the first one is writing.
    intruder = start_worker(settings, ready=False)
    sent += fault_env.publish(settings, tickets[100:])
    assert intruder.wait_exit() == 1
    assert "already open in another process" in intruder.log()
    # `triage search` does not open the store: the owner answers it, while it works.
    search = subprocess.run(
        [sys.executable, "-m", "cli", "search", "parcel tracking"],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert search.returncode == 0 and "answered by worker" in search.stderr, search.stderr
    # This very process opening it: refused the same way as the second worker.
    with pytest.raises(StoreLocked, match="TRIAGE_CHROMA_URL"):
        open_store(settings, make_embedder(settings))

    started = time.monotonic()
    recovery_s = wait_accounted(fault_env.engine, sent, 120, "every ticket")
    result = tally(fault_env.engine, sent)
    owner.stop()  # releases the store: now it can be opened and counted
    with opened_store(settings, make_embedder(settings)) as store:
        vectors = store.count()
    report(
        "second process on embedded Chroma",
        result,
        recovery_s,
        intruders_refused=2,
        vectors=vectors,
        total_s=round(time.monotonic() - started, 1),
    )
    assert result.lost == 0 and result.doubled == 0 and result.failed == 0, result
    assert vectors == result.decided == N_TICKETS  # no vector lost to the intruder
