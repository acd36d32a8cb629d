"""TRIAGE_REDECIDE_ON_EDIT through a real worker: an edited ticket is routed again on its
new text, never matched with its own duplicates; a reviewed decision is kept; every
re-decision leaves an audit row; the webhook is sent again only when the route or the
matched ticket changed. And the outbox's replacement of a decision's actions."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from actions.outbox import new_action_id
from config.celery_app import create_app
from config.settings import Settings
from tests.conftest import WorkerProcess, decisions, rows, wait_for
from tests.receiver import SECRET, Receiver
from tests.test_lifecycle_e2e import PRINTER, VPN, VPN_AGAIN
from tickets import db, outbox
from tickets.feedback import record_verdict
from tickets.ledger import Ledger
from tickets.model import Ticket, TicketUpdate
from tickets.outbox import ActionRow
from tickets.queue import publish, publish_update

T0 = datetime(2026, 1, 1, tzinfo=UTC)

INVOICE = ("Invoice total wrong", "The March invoice charges us twice for the same seat licence.")
PASSWORD = ("Password reset mail", "The password reset email never arrives in my inbox.")


def _ticket(ticket_id: str, subject: str, body: str) -> Ticket:
    return Ticket(source="github", ticket_id=ticket_id, subject=subject, body=body)


def _edit(ticket_id: str, minutes: int, subject: str, body: str) -> TicketUpdate:
    return TicketUpdate(
        source="github",
        ticket_id=ticket_id,
        event="issues.edited",
        updated_at=T0 + timedelta(minutes=minutes),
        text=True,
        subject=subject,
        body=body,
    )


def _audit(url: str, ticket_id: str) -> list[db.RedecisionRow]:
    return sorted(
        (r for r in rows(url, db.RedecisionRow) if r.ticket_id == ticket_id), key=lambda r: r.id
    )


def _posts(receiver: Receiver, ticket_id: str) -> list[dict[str, Any]]:
    bodies = [receiver.verify(r) for r in receiver.delivered()]
    return [b for b in bodies if b["ticket_id"] == ticket_id]


def test_an_edit_re_decides_the_ticket_and_sends_a_changed_decision_again(
    worker_settings: Callable[..., Settings],
    database_url: str,
    queue_name: str,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    url = database_url
    settings = worker_settings(
        database_url=url,
        redecide_on_edit=True,
        outbound_webhook_url=receiver.url,
        outbound_webhook_secret=SECRET,
        actions_sweep_s=0.5,
    )
    worker = start_worker(settings)
    app = create_app(settings)
    ledger = Ledger(redis.Redis.from_url(settings.redis_url), queue_name)

    def send(*tickets: Ticket) -> None:
        list(publish(app, tickets, queue=queue_name, ledger=ledger))
        for t in tickets:
            wait_for(lambda t=t: t.ticket_id in decisions(url), 60, f"ticket {t.ticket_id}")

    def edit(update: TicketUpdate, audits: int) -> None:
        publish_update(app, update, queue=queue_name)
        wait_for(
            lambda: len(_audit(url, update.ticket_id)) >= audits,
            60,
            f"re-decision {audits} of {update.ticket_id}",
        )

    send(_ticket("1", *PRINTER))
    send(_ticket("2", *VPN))
    send(_ticket("3", *INVOICE))
    first = decisions(url)
    assert first["1"].route == "manual" and first["1"].matched_ticket_id in (None, "2", "3")
    wait_for(lambda: len(_posts(receiver, "1")) == 1, 30, "ticket 1's webhook")

    # Ticket 1 now says what ticket 2 says: it is routed again and meets ticket 2.
    edit(_edit("1", 5, *VPN_AGAIN), 1)
    again = decisions(url)["1"]
    assert again.route in ("duplicate", "suggest") and again.matched_ticket_id == "2"
    assert again.redecided_at is not None
    assert again.decided_at == first["1"].decided_at  # the first decision's time stays
    assert again.subject == VPN_AGAIN[0]
    (audit,) = _audit(url, "1")
    assert (audit.outcome, audit.route_before, audit.route_after) == (
        "changed",
        "manual",
        again.route,
    )
    assert audit.matched_ticket_id_after == "2"
    # The changed decision is sent again, as the read API would show it now.
    wait_for(lambda: len(_posts(receiver, "1")) == 2, 30, "ticket 1's second webhook")
    second = _posts(receiver, "1")[-1]
    assert second["route"] == again.route and second["matched_ticket_id"] == "2"
    assert second["redecided_at"] is not None
    (action,) = [a for a in rows(url, ActionRow) if a.ticket_id == "1"]
    assert action.status == outbox.DELIVERED and action.attempts == 1

    # A wording change that routes the same way: audited, nothing sent again.
    edit(_edit("1", 6, VPN_AGAIN[0], VPN_AGAIN[1] + " Thanks."), 2)
    assert _audit(url, "1")[-1].outcome == "same"
    assert decisions(url)["1"].matched_ticket_id == "2"
    time.sleep(1.5)  # two sweeps: a re-send would have gone out by now
    assert len(_posts(receiver, "1")) == 2

    # Ticket 4 repeats ticket 3 word for word: its duplicate. Ticket 3, edited a little, is
    # never matched with it (it would be a duplicate of its own duplicate).
    send(_ticket("4", *INVOICE))
    four = decisions(url)["4"]
    assert four.route == "duplicate" and four.canonical_ticket_id == "3"
    edit(_edit("3", 7, INVOICE[0], INVOICE[1] + " Please fix."), 1)
    three = decisions(url)["3"]
    assert three.matched_ticket_id != "4" and all(m["ticket_id"] != "4" for m in three.matches)
    assert three.canonical_ticket_id == "3"

    # Reviewed by an agent: kept as it is, and the audit says so.
    engine = db.make_engine(url)
    with Session(engine) as session:
        decision = session.scalars(
            select(db.DecisionRow).where(db.DecisionRow.ticket_id == "1")
        ).one()
        record_verdict(
            session, decision, verdict="confirm", agent="ana", comment=None, now=datetime.now(UTC)
        )
        session.commit()
    engine.dispose()
    before = decisions(url)["1"]
    edit(_edit("1", 8, *PASSWORD), 3)
    assert _audit(url, "1")[-1].outcome == "kept"
    kept = decisions(url)["1"]
    assert (kept.route, kept.matched_ticket_id, kept.redecided_at) == (
        before.route,
        before.matched_ticket_id,
        before.redecided_at,
    )
    # The text is replaced all the same.
    wait_for(
        lambda: any(
            r.ticket_id == "1" and r.subject == PASSWORD[0] for r in rows(url, db.TicketRow)
        ),
        30,
        "the reviewed ticket's new text",
    )
    assert "'failed'" not in worker.log()


def test_restaged_actions_replace_the_earlier_ones(database_url: str) -> None:
    engine = db.make_engine(database_url)
    now = datetime.now(UTC)

    def row(payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "action_id": new_action_id(),
            "source": "github",
            "ticket_id": "1",
            "kind": "webhook",
            "target": "http://receiver/hook",
            "payload": payload,
            "status": outbox.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }

    first = row({"route": "manual"})
    with Session(engine) as session:
        outbox.stage(session, [first])
        session.commit()
        session.execute(
            ActionRow.__table__.update().values(
                status=outbox.DELIVERED, attempts=1, last_status=200, delivered_at=now
            )
        )
        session.commit()
        # stage() keeps a queued action as it is (a redelivered decision)...
        outbox.stage(session, [row({"route": "suggest"})])
        session.commit()
        (kept,) = session.scalars(select(ActionRow)).all()
        assert kept.action_id == first["action_id"] and kept.payload == {"route": "manual"}
        # ...restage() replaces it: new id, new payload, pending and never tried.
        second = row({"route": "duplicate"})
        outbox.restage(session, [second])
        session.commit()
        session.expire_all()
        (replaced,) = session.scalars(select(ActionRow)).all()
        assert replaced.action_id == second["action_id"]
        assert replaced.payload == {"route": "duplicate"}
        assert (replaced.status, replaced.attempts, replaced.last_status) == (
            outbox.PENDING,
            0,
            None,
        )
        assert replaced.delivered_at is None
    engine.dispose()
