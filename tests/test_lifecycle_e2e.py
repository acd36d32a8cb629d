"""Ticket updates through a real worker: re-embedding an edited ticket, statuses filtering
matches (TRIAGE_MATCH_STATUSES), the loop guard and the helpdesk's feedback."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from config.celery_app import create_app
from config.settings import Settings
from tests.conftest import WorkerProcess, decisions, n_rows, rows, wait_for
from tickets import db
from tickets.ledger import Ledger
from tickets.marks import note_marker
from tickets.model import Ticket, TicketUpdate
from tickets.queue import publish, publish_update

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _ticket(ticket_id: str, subject: str, body: str) -> Ticket:
    return Ticket(source="github", ticket_id=ticket_id, subject=subject, body=body)


def _update(ticket_id: str, minutes: int, **fields: Any) -> TicketUpdate:
    return TicketUpdate(
        source="github",
        ticket_id=ticket_id,
        event=fields.pop("event", "issues.edited"),
        updated_at=T0 + timedelta(minutes=minutes),
        **fields,
    )


def _row(url: str, ticket_id: str) -> db.TicketRow:
    row = _maybe_row(url, ticket_id)
    assert row is not None, f"ticket {ticket_id} is not stored"
    return row


def _maybe_row(url: str, ticket_id: str) -> db.TicketRow | None:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            row = session.scalars(
                select(db.TicketRow).where(db.TicketRow.ticket_id == ticket_id)
            ).first()
            if row is not None:
                session.expunge(row)
            return row
    finally:
        engine.dispose()


def _subject(url: str, ticket_id: str) -> str | None:
    row = _maybe_row(url, ticket_id)
    return None if row is None else row.subject


PRINTER = ("Printer jams", "The printer on the third floor jams every time I print double sided.")
VPN = ("VPN drops", "The VPN disconnects every hour on my MacBook and I have to log in again.")
VPN_AGAIN = (
    "VPN keeps dropping",
    "My VPN connection drops every hour on macOS, must log in again.",
)
PRINTER_AGAIN = ("Printer jam", "Printer on floor three jams whenever I print double sided pages.")


def test_updates_reembed_filter_guard_and_feedback(
    worker_settings: Callable[..., Settings],
    database_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = database_url  # SQLite and PostgreSQL (the fixture's two params)
    settings = worker_settings(database_url=database_url, match_statuses="open,pending,solved")
    worker = start_worker(settings)
    app = create_app(settings)

    ledger = Ledger(redis.Redis.from_url(settings.redis_url), queue_name)

    def send(*tickets: Ticket) -> None:  # as every producer does: ledger, then queue
        list(publish(app, tickets, queue=queue_name, ledger=ledger))

    def done(n: int) -> None:
        wait_for(lambda: worker.log().count("succeeded") >= n, 60, f"{n} tasks")

    # An update of a ticket the product never accepted is dropped.
    publish_update(app, _update("0", 1, text=True, subject="x", body="y"), queue=queue_name)
    wait_for(lambda: "'unknown'" in worker.log(), 60, "the unknown ticket's update")
    assert n_rows(url, db.TicketRow) == 0 and n_rows(url, db.FailureRow) == 0

    # An update that arrives while its ticket is in flight waits for it (retried), and
    # makes neither a second decision nor a lost change.
    send(_ticket("1", *PRINTER))
    publish_update(app, _update("1", 5, text=True, subject=VPN[0], body=VPN[1]), queue=queue_name)
    wait_for(lambda: _subject(url, "1") == VPN[0], 60, "the early update applied")
    # The vector reaches Chroma after the commit, then indexed_at is set.
    wait_for(lambda: _row(url, "1").indexed_at is not None, 60, "the new vector stored")
    assert _row(url, "1").body == VPN[1]
    assert n_rows(url, db.DecisionRow) == 1 and n_rows(url, db.FailureRow) == 0

    # An older update delivered late does not win.
    publish_update(app, _update("1", 1, text=True, subject="old", body="old"), queue=queue_name)
    wait_for(lambda: "'stale'" in worker.log(), 60, "the stale update")
    assert _row(url, "1").subject == VPN[0]

    # The new text is what later tickets find; the old text is not.
    send(_ticket("2", *VPN_AGAIN))
    wait_for(lambda: "2" in decisions(url), 60, "ticket 2")
    send(_ticket("3", *PRINTER_AGAIN))
    wait_for(lambda: "3" in decisions(url), 60, "ticket 3")
    got = decisions(url)
    assert got["2"].route in ("duplicate", "suggest") and got["2"].matched_ticket_id == "1"
    # Ticket 1 is still offered (listed), but scored as the VPN ticket it is now.
    assert got["3"].route == "manual" and got["3"].score is not None
    assert got["3"].score < got["3"].suggest_threshold < got["2"].score

    # A closed ticket is not offered when TRIAGE_MATCH_STATUSES leaves out closed.
    publish_update(app, _update("3", 10, event="issues.closed", status="closed"), queue=queue_name)
    wait_for(lambda: _row(url, "3").status == "closed", 60, "ticket 3 closed")
    send(_ticket("4", *PRINTER_AGAIN))
    wait_for(lambda: "4" in decisions(url), 60, "ticket 4")
    four = decisions(url)["4"]
    assert four.route == "manual" and all(m["ticket_id"] != "3" for m in four.matches)
    # Reopened, it is offered again.
    publish_update(app, _update("3", 11, event="issues.reopened", status="open"), queue=queue_name)
    wait_for(lambda: _row(url, "3").status == "open", 60, "ticket 3 reopened")
    send(_ticket("5", *PRINTER_AGAIN))
    wait_for(lambda: "5" in decisions(url), 60, "ticket 5")
    assert decisions(url)["5"].matched_ticket_id in ("3", "4")

    # Loop guard: the product's own tag and note change nothing and teach nothing.
    assert got["2"].route in ("duplicate", "suggest")
    own_tag = "triage-duplicate" if got["2"].route == "duplicate" else "triage-similar"
    before = _row(url, "2")
    tasks = worker.log().count("succeeded")
    publish_update(
        app,
        _update("2", 20, event="issues.labeled", tags_added=(own_tag,)),
        queue=queue_name,
    )
    publish_update(
        app,
        _update(
            "2", 21, event="issue_comment.created", note="Likely a duplicate " + note_marker("a1")
        ),
        queue=queue_name,
    )
    done(tasks + 2)
    after = _row(url, "2")
    assert (after.id, after.subject, after.body, after.vector) == (
        before.id,
        before.subject,
        before.body,
        before.vector,
    )
    assert n_rows(url, db.FeedbackRow) == 0
    assert worker.log().count("'own'") >= 2

    # Feedback: the duplicate tag removed → veto; again (a redelivery) → still one row;
    # closed as a duplicate → confirm.
    veto = _update("2", 30, event="issues.unlabeled", tags_removed=("triage-duplicate",))
    if own_tag != "triage-duplicate":  # a suggest: an agent tags it first (a confirm)
        publish_update(
            app,
            _update("2", 25, event="issues.labeled", tags_added=("triage-duplicate",)),
            queue=queue_name,
        )
        wait_for(lambda: n_rows(url, db.FeedbackRow) == 1, 60, "the agent's tag")
    publish_update(app, veto, queue=queue_name)
    publish_update(app, veto, queue=queue_name)
    wait_for(lambda: any(r.verdict == "veto" for r in rows(url, db.FeedbackRow)), 60, "veto")
    tasks = worker.log().count("succeeded")
    done(tasks)
    publish_update(
        app,
        _update("2", 40, event="issues.closed", status="closed", duplicate=True),
        queue=queue_name,
    )
    wait_for(
        lambda: (
            rows(url, db.FeedbackRow)[-1].verdict == "confirm" and _row(url, "2").status == "closed"
        ),
        60,
        "confirm",
    )
    feedback = rows(url, db.FeedbackRow)
    # One row per agent (the feedback API's rule): the helpdesk's latest verdict.
    assert [(r.agent, r.verdict) for r in feedback] == [("helpdesk:github", "confirm")]
    assert "issues.closed" in (feedback[0].comment or "")
    assert all(r.route == got["2"].route for r in feedback)
    assert n_rows(url, db.DecisionRow) == 5 and n_rows(url, db.FailureRow) == 0
