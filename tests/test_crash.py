"""SIGKILL of a worker mid-run: nothing lost, nothing doubled, nothing re-decided."""

from __future__ import annotations

import time
from collections.abc import Callable

from cli.demo import sample_path
from config.settings import Settings
from tests.conftest import WorkerProcess, decisions, ingest, n_rows, wait_for
from tickets import db

N = 206  # the bundled demo sample


def test_killed_worker_loses_and_doubles_nothing(
    worker_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # A short visibility timeout so the killed worker's unacked tickets come back quickly.
    settings = worker_settings(
        batch_size=16,
        batch_wait_ms=50,
        visibility_timeout_s=8,
        unacked_restore_interval_s=1,
        retry_backoff_max_s=4,
    )
    first = start_worker(settings)
    ingest(settings, sample_path())
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) >= 40, 60, "the first decisions")
    first.proc.kill()  # SIGKILL: no warm shutdown, unacked messages stay in Redis
    first.proc.wait(10)
    decided_at_kill = n_rows(sqlite_url, db.DecisionRow)
    assert decided_at_kill < N, "the kill came too late to test anything"

    started = time.monotonic()
    second = start_worker(settings)
    # Bounded recovery: the visibility timeout + the restore sweep + a few batches.
    wait_for(
        lambda: n_rows(sqlite_url, db.DecisionRow) + n_rows(sqlite_url, db.FailureRow) >= N,
        180,
        "recovery",
    )
    recovery_s = time.monotonic() - started
    wait_for(lambda: "succeeded" in second.log(), 60, "the second worker's tasks")

    rows = decisions(sqlite_url)
    assert len(rows) == N and n_rows(sqlite_url, db.DecisionRow) == N
    assert n_rows(sqlite_url, db.TicketRow) == N and n_rows(sqlite_url, db.FailureRow) == 0
    for row in rows.values():
        assert row.matched_ticket_id != row.ticket_id
        if row.matched_ticket_id in rows:
            assert rows[row.matched_ticket_id].id < row.id
    print(f"recovered {N - decided_at_kill} tickets in {recovery_s:.1f} s after the kill")
