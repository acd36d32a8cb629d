"""Re-deciding an edited ticket (TRIAGE_REDECIDE_ON_EDIT).

An edit (worker/lifecycle.py) replaces a ticket's text and vector. With this setting on, its
decision is routed again on the new text, inside the same decision section and written in
the same SQL transaction as the new text: no section sees one without the other.

- **Against what**: every ticket stored in its match scope now (the store's neighbours, the
  BM25 index, and the tickets whose vectors have not reached the store yet, caught up from
  SQL as every section does), except itself and the tickets whose canonical ticket it is.
  Those were linked to it: offering one would make the ticket a duplicate of its own
  duplicate. A new ticket meets every ticket decided before it; an edited one meets every
  ticket stored now, as the agent reading it does.
- **A reviewed decision is kept**: an agent's confirm or veto (the feedback table: the API,
  the review queue, the helpdesk's own verdicts) judged it, and the product does not overrule
  an agent.
- **What changes**: the decision row's route, score, matches, canonical ticket, thresholds,
  subject, and ``redecided_at``. ``decided_at`` and the latency stay the first decision's,
  and tickets already linked to this one keep their link.
- **Actions**: when the route or the matched ticket changed, the decision's actions (outbound
  webhooks, write-back) are staged again in the same transaction, replacing the earlier ones
  under new idempotency ids (tickets/outbox.py restage). The write-back's tag and note come
  back as an update event that worker/lifecycle.py's loop guard sets aside, so a
  re-decision never causes another.
- **Audit**: one ``triage_redecisions`` row per edit that reached a decision: ``changed``,
  ``same``, or ``kept`` (reviewed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from tickets import db
from tickets.model import Ticket, TicketKey
from worker.pipeline import Services, route_one, with_session
from worker.routing import Outcome

Result = Literal["changed", "same", "kept"]

# Columns of the first decision that a re-decision keeps.
_KEPT = ("source", "ticket_id", "queue", "received_at", "decided_at", "latency_ms")


@dataclass(frozen=True)
class Redecision:
    """A re-decision, routed under the section and waiting for the commit."""

    result: Result
    route: str
    canonical: TicketKey
    # The decision row's new columns; empty when the decision is kept.
    values: dict[str, Any] = field(default_factory=dict)


def reviewed(session: Session, key: TicketKey) -> bool:
    """Whether an agent (or the helpdesk) has judged this ticket's decision."""
    found = session.scalar(
        select(db.FeedbackRow.id).where(db.key_filter(db.FeedbackRow, [key])).limit(1)
    )
    return found is not None


def route_again(
    ticket: Ticket, text: str, vector: np.ndarray, services: Services
) -> tuple[Outcome, dict[str, Any]]:
    """Route the edited ``ticket`` (its new ``text`` and ``vector``), never with a ticket
    linked to it: its outcome and the decision row's new columns. The caller holds its
    scope's decision section."""
    outcome, values = route_one(
        ticket, text, vector, services, leave_out=lambda nb: nb.canonical == ticket.key
    )
    values["redecided_at"] = values["decided_at"]
    for column in _KEPT:
        values.pop(column)
    return outcome, values


def redecide(
    ticket: Ticket, text: str, vector: np.ndarray, decision: db.DecisionRow, services: Services
) -> Redecision:
    """The edited ticket's decision: kept when reviewed, else routed again; ``changed``
    when the route or the matched ticket differ from the decision's."""
    if with_session(lambda s: reviewed(s, ticket.key), services.engine):
        return Redecision("kept", decision.route, _canonical(decision))
    outcome, values = route_again(ticket, text, vector, services)
    changed = outcome.route != decision.route or (
        values["matched_source"],
        values["matched_ticket_id"],
    ) != (decision.matched_source, decision.matched_ticket_id)
    return Redecision("changed" if changed else "same", outcome.route, outcome.canonical, values)


def write(
    session: Session, decision: db.DecisionRow, redecision: Redecision, services: Services
) -> None:
    """In the edit's transaction: the decision's new columns, the audit row, and, when the
    decision changed, its actions again."""
    key = TicketKey(decision.source, decision.ticket_id)
    values = redecision.values
    if values:
        session.execute(
            update(db.DecisionRow).where(db.key_filter(db.DecisionRow, [key])).values(**values)
        )
    session.execute(
        insert(db.RedecisionRow).values(
            source=key.source,
            ticket_id=key.ticket_id,
            outcome=redecision.result,
            route_before=decision.route,
            score_before=decision.score,
            matched_source_before=decision.matched_source,
            matched_ticket_id_before=decision.matched_ticket_id,
            route_after=values.get("route"),
            score_after=values.get("score"),
            matched_source_after=values.get("matched_source"),
            matched_ticket_id_after=values.get("matched_ticket_id"),
            redecided_at=values.get("redecided_at") or datetime.now(UTC),
        )
    )
    if redecision.result == "changed" and services.outbox is not None:
        columns = {c.key: getattr(decision, c.key) for c in db.DecisionRow.__mapper__.column_attrs}
        services.outbox.stage(session, [{**columns, **values}], again=True)


def _canonical(decision: db.DecisionRow) -> TicketKey:
    return TicketKey(decision.canonical_source, decision.canonical_ticket_id)
