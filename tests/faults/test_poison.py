"""Poison tickets in the middle of a batch: an input the embedding service rejects (over the
model's context, on an Ollama that ignores truncate, ollama#14186) and a message that is not
a valid ticket. Each fails alone, into the failure table with its reason; every batch-mate
is decided."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from config.celery_app import TICKET_TASK, create_app
from tests.faults.conftest import FaultEnv, StartWorker
from tests.faults.harness import make_tickets, report, tally, wait_accounted
from tickets import db
from tickets.model import Ticket, TicketKey

RECOVERY_BOUND_S = 30


def test_poison_ticket_mid_batch(fault_env: FaultEnv, start_worker: StartWorker) -> None:
    # One long wait so the 31 tickets land in one or two batches with the poison inside.
    settings = fault_env.settings(batch_size=32, batch_wait_ms=1500)
    start_worker(settings)
    good = make_tickets(30)
    dump = " ".join(f"0x{i:02x}," for i in range(256))
    poison = Ticket(source="fault", ticket_id="POISON", body=f"Crash dump: {dump}")
    tickets = [*good[:15], poison, *good[15:]]
    started = time.monotonic()
    sent = fault_env.publish(settings, tickets)
    # Not a ticket at all (no text, a source with a colon): refused by the worker itself.
    app = create_app(settings)
    app.send_task(
        TICKET_TASK,
        args=[{"source": "fault", "ticket_id": "INVALID", "body": "", "tags": "x"}, "route"],
        queue=settings.queue,
    )
    app.close()
    sent.append(TicketKey("fault", "INVALID"))
    recovery_s = wait_accounted(fault_env.engine, sent, RECOVERY_BOUND_S, "every ticket")
    result = tally(fault_env.engine, sent)
    with Session(fault_env.engine) as s:
        failures = {f.ticket_id: f for f in s.scalars(select(db.FailureRow))}
    report("poison ticket mid-batch", result, recovery_s, poison=2)
    assert set(failures) == {"POISON", "INVALID"}
    assert failures["POISON"].error_type == "EmbeddingRejected"
    assert "context length" in failures["POISON"].reason
    assert failures["INVALID"].error_type == "InvalidTicket"
    assert "tags" in failures["INVALID"].reason or "text" in failures["INVALID"].reason
    assert failures["POISON"].payload["ticket_id"] == "POISON"  # kept whole for a re-drive
    assert result.decided == len(good) and result.lost == 0 and result.doubled == 0, result
    assert time.monotonic() - started < RECOVERY_BOUND_S
