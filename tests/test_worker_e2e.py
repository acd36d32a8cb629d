"""A real `celery worker` process, real Redis, real messages: the product as users run it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from config.celery_app import TICKETS_TASK, create_app
from config.settings import Settings
from tests.conftest import FIXTURES, WorkerProcess, decisions, ingest, n_rows, rows, wait_for
from tickets import db
from tickets.model import Ticket

TICKETS = FIXTURES / "e2e_tickets.csv"
N_TICKETS = 12


def test_worker_triages_a_file_once_and_only_once(
    make_settings: Callable[..., Settings],
    database_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # A long wait so the whole file lands in one batch: the near-identical pair (E01, E04)
    # must then be caught inside the batch, not through the store.
    settings = make_settings(database_url=database_url, queue=queue_name, batch_wait_ms=1500)
    worker = start_worker(settings)
    out = ingest(settings, TICKETS)
    assert f"{N_TICKETS} tickets enqueued" in out.stderr

    wait_for(lambda: n_rows(database_url, db.DecisionRow) >= N_TICKETS, 60, "decisions")
    first = decisions(database_url)
    assert len(first) == N_TICKETS and n_rows(database_url, db.FailureRow) == 0

    e01, e04 = first["E01"], first["E04"]
    assert e01.decided_at == e04.decided_at, "the pair should have been decided in one batch"
    assert {e01.route, e04.route} >= {"duplicate"}
    dup, orig = (e04, e01) if e04.route == "duplicate" else (e01, e04)
    assert dup.matched_ticket_id == orig.ticket_id and dup.canonical_ticket_id == orig.ticket_id
    assert orig.route != "duplicate"
    assert (
        first["E11"].route in ("suggest", "duplicate") and first["E11"].matched_ticket_id == "E02"
    )
    wait_for(lambda: "batch of 12: 12 decided" in worker.log(), 30, "the batch log line")

    # The same file again, one ticket per message this time: no new row, nothing
    # re-decided, nobody matched with itself.
    ingest(settings, TICKETS, "--per-message", "1")
    wait_for(lambda: "unchanged" in worker.log(), 60, "the redelivered tickets")
    # The file went as one message of 12 the first time, as 12 messages the second.
    wait_for(lambda: worker.log().count("succeeded") >= 1 + N_TICKETS, 60, "all tasks")
    second = decisions(database_url)
    assert n_rows(database_url, db.DecisionRow) == N_TICKETS
    assert n_rows(database_url, db.TicketRow) == N_TICKETS
    for tid, row in first.items():
        again = second[tid]
        assert (again.route, again.score, again.matched_ticket_id, again.decided_at, again.id) == (
            row.route,
            row.score,
            row.matched_ticket_id,
            row.decided_at,
            row.id,
        )
    for row in second.values():
        assert row.matched_ticket_id != row.ticket_id
        assert all(m["ticket_id"] != row.ticket_id for m in row.matches)
        if row.matched_ticket_id in second:  # never points at a ticket decided after it
            assert second[row.matched_ticket_id].id < row.id


def test_backfill_then_live_tickets(
    worker_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    settings = worker_settings()
    start_worker(settings)
    out = ingest(settings, TICKETS, "--backfill")
    assert "history tickets (backfill)" in out.stderr
    wait_for(lambda: n_rows(sqlite_url, db.TicketRow) >= N_TICKETS, 60, "history")
    assert n_rows(sqlite_url, db.DecisionRow) == 0

    live = tmp_path / "live.jsonl"
    live.write_text(
        '{"id": "L1", "subject": "Login crash", "body": "The Android app crashes when I press the login button since the update."}\n'
        '{"id": "L2", "body": "broken row without text", "subject": ""}\n'
        '{"id": "L3", "body": ""}\n'
    )
    out = ingest(settings, live)
    assert "line 3" in out.stderr and "1 row(s) rejected" in out.stderr
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) >= 2, 60, "live decisions")
    rows = decisions(sqlite_url)
    assert rows["L1"].route == "duplicate" and rows["L1"].canonical_ticket_id in ("E01", "E04")
    assert rows["L2"].route == "manual"


def test_worker_refuses_a_bad_thresholds_file(
    worker_settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    bad = tmp_path / "thresholds.json"
    bad.write_text('{"version": 1, "default": {"duplicate": 0.7, "suggest": 0.9}, "queues": {}}')
    worker = start_worker(worker_settings(thresholds_file=bad), ready=False)
    assert worker.wait_exit() == 1
    assert "TRIAGE_THRESHOLDS_FILE" in worker.log() and "suggest" in worker.log()


def test_a_bad_ticket_in_a_grouped_message_fails_alone(
    worker_settings: Callable[..., Settings],
    sqlite_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = worker_settings()
    start_worker(settings)
    good = [
        Ticket(source="grp", ticket_id=f"G{i}", body=f"Ticket number {i} about the login page")
        for i in range(3)
    ]
    # A producer bug, not a user's row: the importer would have refused it.
    bad = {"source": "grp", "ticket_id": "BAD", "body": 42}
    messages = [good[0].to_message(), bad, good[1].to_message(), good[2].to_message()]
    create_app(settings).send_task(TICKETS_TASK, args=[messages, "route"], queue=queue_name)
    wait_for(
        lambda: n_rows(sqlite_url, db.DecisionRow) == 3 and n_rows(sqlite_url, db.FailureRow) == 1,
        60,
        "three decisions and one failure",
    )
    assert set(decisions(sqlite_url)) == {"G0", "G1", "G2"}
    (failure,) = rows(sqlite_url, db.FailureRow)
    assert failure.ticket_id == "BAD" and failure.payload == bad
