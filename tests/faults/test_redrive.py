"""`triage redrive`: failed tickets go back on the queue, each decided once, with an audit
trail; filters, dry run, and tickets that cannot be re-driven reported, never skipped."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import update
from sqlalchemy.orm import Session

from config.settings import Settings
from tests.conftest import decision_row, rows, run_triage
from tests.faults.conftest import FaultEnv, StartWorker
from tests.faults.harness import tally, wait_until
from tests.ollama_fake import Fault
from tickets import db
from tickets.model import Ticket, TicketKey


def test_failed_ticket_is_redriven_and_decided_once(
    fault_env: FaultEnv, start_worker: StartWorker
) -> None:
    # No retries: the first garbage answer dead-letters the ticket at once.
    settings = fault_env.settings(max_retries=0, batch_wait_ms=300)
    start_worker(settings)
    fault_env.ollama.push(Fault.malformed_json())
    bad = Ticket(source="fault", ticket_id="G1", body="The export button does nothing at all")
    sent = fault_env.publish(settings, [bad])
    wait_until(lambda: tally(fault_env.engine, sent).failed == 1, 60, "the failure row")
    (failure,) = rows(fault_env.engine, db.FailureRow)
    assert failure.error_type == "EmbedderProtocolError" and failure.mode == "route"
    assert "not JSON" in failure.reason

    dry = run_triage(settings, "redrive", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would publish" in dry.stdout and "fault:G1" in dry.stdout
    assert rows(fault_env.engine, db.RedriveRow) == [] and fault_env.queue_depth() == 0

    # The service answers well again: the re-driven ticket is decided, once.
    out = run_triage(settings, "redrive", "--reason", "not json")
    assert out.returncode == 0, out.stderr
    assert "1 published" in out.stderr
    wait_until(lambda: tally(fault_env.engine, sent).decided == 1, 60, "the decision")
    result = tally(fault_env.engine, sent)
    assert (result.decided, result.failed, result.doubled) == (1, 0, 0)
    (audit,) = rows(fault_env.engine, db.RedriveRow)
    assert (audit.ticket_id, audit.error_type, audit.outcome) == (
        "G1",
        "EmbedderProtocolError",
        "published",
    )

    # Idempotent: a second run finds nothing to do, and the decision stays the only one.
    again = run_triage(settings, "redrive")
    assert again.returncode == 0 and "0 published" in again.stderr
    assert len(rows(fault_env.engine, db.DecisionRow)) == 1


def _message(raw: bytes) -> tuple[dict, str]:  # type: ignore[type-arg]
    envelope = json.loads(raw)
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return args[0], args[1]


def test_filters_dry_run_and_unavailable_text(
    worker_settings: Callable[..., Settings], sqlite_url: str, queue_name: str, redis_url: str
) -> None:
    settings = worker_settings()
    engine = db.make_engine(sqlite_url)
    now = datetime.now(UTC)

    def fail(
        source: str, tid: str, reason: str, mode: str = "route", payload: object = None
    ) -> None:
        t = Ticket(source=source, ticket_id=tid, body=f"text of {tid}")
        with Session(engine) as s:
            db.record_failure(
                s,
                key=TicketKey(source, tid),
                error_type="EmbedderUnavailable",
                reason=reason,
                attempts=11,
                payload=t.to_message() if payload is None else payload,  # type: ignore[arg-type]
                mode=mode,
            )
            s.commit()

    fail("mail", "A", "gave up after retries: timeout")
    fail("web", "B", "the input length exceeds the context length", mode="backfill")
    fail("web", "C", "unexpected error: boom", payload={"raw": "b'\\x00'"})
    fail("web", "OLD", "gave up after retries: timeout")
    with Session(engine) as s:
        s.execute(
            update(db.FailureRow)
            .where(db.FailureRow.ticket_id == "OLD")
            .values(failed_at=now - timedelta(days=3))
        )
        s.commit()
    queue = redis.Redis.from_url(redis_url)

    out = run_triage(settings, "redrive", "--dry-run")
    assert out.returncode == 1  # C cannot be re-driven: said, not skipped
    assert "unavailable" in out.stdout and "web:C" in out.stdout and "no row" in out.stdout
    assert queue.llen(queue_name) == 0 and rows(engine, db.RedriveRow) == []

    out = run_triage(settings, "redrive", "--source", "mail")
    assert out.returncode == 0, out.stderr
    assert queue.llen(queue_name) == 1
    message, mode = _message(queue.rpop(queue_name))  # type: ignore[arg-type]
    assert (message["ticket_id"], mode) == ("A", "route")

    out = run_triage(settings, "redrive", "--reason", "CONTEXT LENGTH", "--since", "1h")
    assert out.returncode == 0, out.stderr
    message, mode = _message(queue.rpop(queue_name))  # type: ignore[arg-type]
    assert (message["ticket_id"], mode) == ("B", "backfill")  # history stays history

    # A pending re-drive is not sent twice; --since leaves out older failures; --limit caps.
    out = run_triage(settings, "redrive", "--since", "1d", "--limit", "5")
    assert out.returncode == 1 and "0 published" in out.stderr  # only C matches: unavailable
    out = run_triage(settings, "redrive", "--limit", "1")
    assert "1 published" in out.stderr and "web:OLD" in out.stdout
    assert queue.llen(queue_name) == 1
    failures = {f.ticket_id: f for f in rows(engine, db.FailureRow)}
    assert failures["A"].redriven_at is not None and failures["A"].redrive_count == 1
    assert failures["C"].redriven_at is None
    assert sorted(a.ticket_id for a in rows(engine, db.RedriveRow)) == ["A", "B", "OLD"]

    # A failure row for a ticket decided meanwhile is stale: removed, audited, not sent.
    with Session(engine) as s:
        s.add(decision_row("A", source="mail", received_at=now, decided_at=now))
        s.commit()
    out = run_triage(settings, "redrive", "--source", "mail", "--include-pending")
    assert "already decided" in out.stdout and queue.llen(queue_name) == 1
    assert "A" not in {f.ticket_id for f in rows(engine, db.FailureRow)}

    bad = run_triage(settings, "redrive", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "--since" in bad.stderr
    engine.dispose()
    queue.close()
