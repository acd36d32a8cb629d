"""Applying a helpdesk's report that a stored ticket changed (tickets/model.py TicketUpdate).

- **Text** (subject or body differ from the stored ones): the ticket is embedded again and
  its row moves to a new id with the new text, vector and ``indexed_at`` null, as a routed
  history ticket's does (tickets/db.py save_batch): every decision section that took its
  snapshot earlier catches it up by id, and every process's BM25 index replaces the entry
  when it reads the row again (worker/lexical.py). The Chroma vector is replaced after the
  commit. The ticket's decision is kept, or routed again with TRIAGE_REDECIDE_ON_EDIT
  (worker/redecide.py), in the same section and transaction.
- **Status**: the row's ``status``; TRIAGE_MATCH_STATUSES is applied inside the decision
  section against SQL (worker/pipeline.py), so a status needs no write to Chroma.
- **Order**: an update whose helpdesk time (``updated_at``) is older than the last one
  applied changes nothing; the same time again (a redelivery) changes nothing new.
- **Before the ticket is stored**: while the ticket is in flight (in the ledger,
  tickets/ledger.py: accepted, its row not written yet), TicketNotStored, a transient error:
  the task retries with backoff until the ticket's own message is settled (never a second
  decision). A ticket neither stored nor in flight is one the product never accepted (a
  helpdesk ticket older than the deployment, say): the update is ``unknown`` and dropped.
- **Loop guard**: the product's own tags (TRIAGE_ACTIONS_*_TAG) and notes (ending with
  tickets/marks.py's marker) are no change: they neither re-embed nor count as feedback.
- **Feedback** (tickets/feedback.py's table, agent ``helpdesk:<source>``): merged or closed
  as a duplicate, or the duplicate tag added to a ticket the product did not tag itself →
  confirm; the duplicate tag removed → veto. A verdict equal to the ticket's latest one
  from the helpdesk is not stored again (redeliveries).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tickets import db
from tickets import purge as purge_sql
from tickets.errors import TransientError
from tickets.feedback import JUDGED_ROUTES, record_verdict
from tickets.marks import marked_action
from tickets.model import Ticket, TicketKey, TicketUpdate
from worker.pipeline import (
    Services,
    collector,
    encode_vector,
    scope_lock_name,
    vector_meta,
    with_session,
)
from worker.redecide import Redecision
from worker.redecide import redecide as route_decision
from worker.redecide import write as write_redecision
from worker.text import content_hash, embed_tickets, embedding_text

logger = logging.getLogger(__name__)

HELPDESK_AGENT = "helpdesk:{source}"

Result = Literal["applied", "own", "unchanged", "stale", "unknown", "purged"]


class TicketNotStored(TransientError):
    """The update names a ticket not stored yet (its own message is still on its way)."""


@dataclass(frozen=True)
class Applied:
    result: Result
    reembedded: bool = False
    status: str | None = None
    feedback: str | None = None
    # TRIAGE_REDECIDE_ON_EDIT: 'changed', 'same' or 'kept' (worker/redecide.py)
    redecided: str | None = None


@dataclass(frozen=True)
class Change:
    """What an update changes, once the product's own marks are set aside."""

    text: bool
    status: str | None
    tags: list[str] | None  # the new tag set, when the tags changed
    verdict: str | None
    own: bool  # the event carried the product's own tag or note


def classify(
    update: TicketUpdate,
    row: db.TicketRow,
    route: str | None,
    *,
    duplicate_tag: str,
    own_tags: frozenset[str],
) -> Change:
    """The effective change of ``update`` on the stored ``row`` (decided ``route``)."""
    stored = [t for t in (row.tags or [])]
    lowered = {t.lower() for t in stored}
    if update.tags is not None:
        now = {t.lower() for t in update.tags}
        added, removed = now - lowered, lowered - now
    else:
        added = {t.lower() for t in update.tags_added} - lowered
        removed = {t.lower() for t in update.tags_removed} & lowered
    dup = duplicate_tag.lower()
    # The product tags its duplicates: removing that tag from one is a veto even when the
    # event that added it never reached intake (a webhook not subscribed to tag changes).
    if route == "duplicate" and dup in {t.lower() for t in update.tags_removed}:
        removed.add(dup)
    new_tags: list[str] | None = None
    if added or removed:
        new_tags = [t for t in stored if t.lower() not in removed]
        new_tags += sorted(added)
    text = update.text and (
        (update.subject or None) != (row.subject or None)
        or (update.body is not None and update.body != row.body)
    )
    status = update.status if update.status and update.status != row.status else None
    verdict: str | None = None
    if update.duplicate or update.merged_into:
        verdict = "confirm"
    elif dup in added and route != "duplicate":
        verdict = "confirm"  # an agent tagged it: the product tags only its duplicates
    elif dup in removed:
        verdict = "veto"  # the product never removes a tag
    own = bool(marked_action(update.note)) or bool((added | removed) & own_tags)
    return Change(bool(text), status, new_tags, verdict, own)


def apply_update(
    update: TicketUpdate,
    services: Services,
    *,
    duplicate_tag: str,
    own_tags: frozenset[str],
    in_flight: Callable[[TicketKey], bool],
    redecide: bool = False,
) -> Applied:
    """Apply ``update``; ``in_flight(key)``: whether the ticket is accepted and not settled;
    ``redecide``: an edited ticket's decision is routed again (TRIAGE_REDECIDE_ON_EDIT)."""
    key = update.key
    # Asked before SQL is read: a ticket settles (row committed) before it leaves the
    # ledger, so "not in flight" and then "no row" means the product never accepted it.
    flying = in_flight(key)

    def read(session: Session) -> tuple[db.TicketRow | None, db.DecisionRow | None, bool]:
        row = db.tickets_by_key(session, [key]).get(key)
        decision = session.scalars(
            select(db.DecisionRow).where(db.key_filter(db.DecisionRow, [key]))
        ).first()
        return row, decision, bool(purge_sql.purged(session, [key]))

    row, decision, erased = with_session(read, services.engine)
    if erased:
        # Erased (tickets/purge.py): whatever the helpdesk still sends of it is not stored.
        return Applied("purged")
    if row is None:
        if flying:
            raise TicketNotStored(f"ticket {key} is not stored yet: the update waits for it")
        return Applied("unknown")
    last = row.updated_at
    if update.updated_at is not None and last is not None:
        if last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        if update.updated_at < last:
            return Applied("stale")
    change = classify(
        update,
        row,
        decision.route if decision is not None else None,
        duplicate_tag=duplicate_tag,
        own_tags=own_tags,
    )
    feedback = None
    if change.verdict is not None and decision is not None:
        feedback = with_session(
            lambda s: _feedback(s, update, decision, change.verdict), services.engine, commit=True
        )
    if not (change.text or change.status or change.tags is not None):
        if feedback is not None:
            return Applied("applied", feedback=feedback)
        return Applied("own" if change.own else "unchanged")
    # Tags the product added are recorded (so that removing one is seen), but the update
    # is still only the product's own: nothing re-embedded, nothing learnt.
    own_only = change.own and not (change.text or change.status or feedback)
    # Set on every applied update: the BM25 indexes read it to know a row changed.
    values: dict[str, Any] = {"updated_at": update.updated_at or update.received_at}
    if change.status:
        values["status"] = change.status
    if change.tags is not None:
        values["tags"] = change.tags
    if not change.text:
        with_session(
            lambda s: s.execute(
                update_stmt().where(db.key_filter(db.TicketRow, [key])).values(**values)
            ),
            services.engine,
            commit=True,
        )
        return Applied("own" if own_only else "applied", status=change.status, feedback=feedback)
    stored, again = _reembed(update, row, decision, values, services, redecide=redecide)
    if not stored:
        return Applied("purged")
    return Applied(
        "applied",
        reembedded=True,
        status=change.status,
        feedback=feedback,
        redecided=None if again is None else again.result,
    )


def update_stmt() -> Any:
    return update(db.TicketRow)


def _feedback(
    session: Session, update: TicketUpdate, decision: db.DecisionRow, verdict: str | None
) -> str | None:
    """The helpdesk's verdict, unless it is the one it gave last (a redelivery) or the
    decision named no match (as the feedback API, tickets/feedback.py)."""
    agent = HELPDESK_AGENT.format(source=update.source)
    latest = session.scalars(
        select(db.FeedbackRow.verdict).where(
            db.key_filter(db.FeedbackRow, [update.key]), db.FeedbackRow.agent == agent
        )
    ).first()
    if verdict is None or latest == verdict or decision.route not in JUDGED_ROUTES:
        return None
    record_verdict(
        session,
        decision,
        verdict=verdict,
        agent=agent,
        comment=f"from the helpdesk: {update.event}",
        now=datetime.now(UTC),
    )
    return verdict


@contextlib.contextmanager
def _section(services: Services, queue: str | None, source: str) -> Iterator[Any]:
    """The update's scope's decision lock, held with the garbage collector paused, as a
    batch's (worker/pipeline.py ``collector``)."""
    lock: Callable[[], AbstractContextManager[Any]] = services.lock
    if services.match_scope is not None and services.scope_lock is not None:
        value = queue if services.match_scope == "queue" else source
        lock = functools.partial(services.scope_lock, scope_lock_name(services.match_scope, value))
    with collector.held_off() as pause, lock() as section:
        pause()
        yield section


def _reembed(
    update: TicketUpdate,
    row: db.TicketRow,
    decision: db.DecisionRow | None,
    values: dict[str, Any],
    services: Services,
    *,
    redecide: bool = False,
) -> tuple[bool, Redecision | None]:
    """The edited text embedded and written (False: the ticket was erased meanwhile, and
    nothing is); with ``redecide``, its decision routed again."""
    ticket = Ticket(
        source=update.source,
        ticket_id=update.ticket_id,
        subject=update.subject,
        body=row.body if update.body is None else update.body,
        body_format=row.body_format if update.body is None else update.body_format,
        queue=row.queue,
    )
    text = embedding_text(ticket)
    vector = embed_tickets(
        services.embedder.embed, [text], [ticket.subject], services.subject_weight
    )[0]
    values.update(
        subject=ticket.subject,
        body=ticket.body,
        body_format=ticket.body_format,
        content_hash=content_hash(text),
        vector=encode_vector(vector),
        indexed_at=None,
        stored_at=datetime.now(UTC),
    )
    key = update.key
    again: Redecision | None = None
    with services.local_lock, _section(services, row.queue, row.source) as section:
        if redecide and decision is not None:
            again = route_decision(ticket, text, vector, decision, services)
        committing = section.committing() if section is not None else contextlib.nullcontext()
        with committing as check:

            def write(session: Session) -> bool:
                if check is not None:
                    check(session)
                # Holds the purge lock shared until the commit: a purge that committed while
                # this edit waited for the section is seen, and none commits before this.
                if purge_sql.guard(session, [key]):
                    return False
                # A new id: sections whose snapshot is older catch the new text up by id.
                session.execute(
                    update_stmt()
                    .where(db.key_filter(db.TicketRow, [key]))
                    .values(id=db.next_ticket_id(session), **values)
                )
                if again is not None and decision is not None:
                    write_redecision(session, decision, again, services)
                return True

            stored = with_session(write, services.engine, commit=True)
    if not stored:
        return False, None
    canonical = key
    route = "history"
    if again is not None:
        canonical, route = again.canonical, again.route
    elif decision is not None:
        canonical = TicketKey(decision.canonical_source, decision.canonical_ticket_id)
        route = decision.route
    readable = row.readable is not False
    services.store.upsert(
        [key], vector[None, :], [vector_meta(key, canonical, route, readable, row.queue)]
    )
    with_session(
        lambda s: db.mark_indexed(s, [key], datetime.now(UTC)), services.engine, commit=True
    )
    if again is not None:
        logger.info("edit of %s re-decided: %s, now %s", key, again.result, again.route)
        if services.outbox is not None:
            services.outbox.publish_committed()
    return True, again
