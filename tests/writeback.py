"""What every vendor's write-back test needs: settings and a deliverer (with the process's
writers, as worker/runtime.py builds them) on a migrated database, and decisions committed
with their tickets and actions as the worker commits them.

A test module uses the ``writeback`` fixture (import it from here) with its vendor's
stand-in URL and credentials as settings overrides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from actions.delivery import Deliverer, Holds
from actions.helpdesks import writers
from actions.outbox import Outbox
from config.settings import Settings, load_settings
from tests.conftest import decision_row
from tickets import db
from tickets.outbox import ActionRow

# The body every stored ticket of these tests has: a note must never carry it.
SECRET_BODY = "The customer's private words: account 4242, do not repeat elsewhere."


@dataclass
class WriteBackEnv:
    settings: Settings
    deliverer: Deliverer

    @property
    def engine(self) -> Engine:
        return self.deliverer.engine

    def store_ticket(self, source: str, ticket_id: str, subject: str) -> None:
        now = datetime.now(UTC)
        with Session(self.engine) as session:
            session.add(
                db.TicketRow(
                    source=source,
                    ticket_id=ticket_id,
                    subject=subject,
                    body=SECRET_BODY,
                    body_format="text",
                    tags=[],
                    received_at=now,
                    stored_at=now,
                    content_hash=hashlib.sha256(f"{source}:{ticket_id}".encode()).hexdigest(),
                    model="local:all-MiniLM-L6-v2",
                )
            )
            session.commit()

    def decide(
        self,
        source: str,
        ticket_id: str,
        route: str,
        matches: list[tuple[str, float]] = (),  # type: ignore[assignment]
        subject: str = "the new ticket",
    ) -> list[ActionRow]:
        """A decision on ``source:ticket_id`` matching ``matches`` (ticket ids of the same
        source, with cosines), committed with its ticket and actions; the actions staged."""
        self.store_ticket(source, ticket_id, subject)
        shown = [{"source": source, "ticket_id": t, "score": s} for t, s in matches]
        top = shown[0] if shown else None
        row = decision_row(
            ticket_id,
            source=source,
            route=route,
            score=top["score"] if top else None,
            matched_source=source if top else None,
            matched_ticket_id=top["ticket_id"] if top else None,
            canonical_source=source,
            canonical_ticket_id=top["ticket_id"] if top and route == "duplicate" else ticket_id,
            matches=shown,
            subject=subject,
        )
        values = {c.name: getattr(row, c.name) for c in db.DecisionRow.__table__.columns}
        values.pop("id")
        box = Outbox(self.settings, lambda ids: None)
        with Session(self.engine) as session:
            db.save_batch(session, [], [values])
            box.stage(session, [values])
            session.commit()
        return self.actions(source, ticket_id)

    def actions(self, source: str, ticket_id: str) -> list[ActionRow]:
        with Session(self.engine) as session:
            return list(
                session.scalars(
                    select(ActionRow).where(
                        ActionRow.source == source, ActionRow.ticket_id == ticket_id
                    )
                )
            )

    def action(self, action_id: str) -> ActionRow:
        with Session(self.engine) as session:
            row = session.scalar(select(ActionRow).where(ActionRow.action_id == action_id))
            assert row is not None
            return row

    def make_due(self, action_id: str) -> None:
        """Make a failed action pending and due now (what the sweeper does when its retry
        time comes), without waiting for the backoff."""
        with Session(self.engine) as session:
            session.execute(
                update(ActionRow)
                .where(ActionRow.action_id == action_id)
                .values(status="pending", next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            session.commit()


@pytest.fixture
def writeback(
    database_url: str, redis_url: str, queue_name: str
) -> Iterator[Callable[..., WriteBackEnv]]:
    """``writeback(**settings)``: a write-back environment on a migrated database of each kind,
    the deliverer in this process with the writers the settings turn on."""
    made: list[Deliverer] = []

    def make(**overrides: Any) -> WriteBackEnv:
        settings = load_settings(
            **{
                "env": "development",
                "database_url": database_url,
                "redis_url": redis_url,
                "queue": queue_name,
                "actions_timeout_s": 2,
                **overrides,
            }
        )
        http = requests.Session()
        deliverer = Deliverer(
            settings,
            db.make_engine(database_url),
            http,
            Holds(redis.Redis.from_url(redis_url), queue_name),
            writers(settings, http),
        )
        made.append(deliverer)
        return WriteBackEnv(settings, deliverer)

    yield make
    for deliverer in made:
        deliverer.close()
        deliverer.engine.dispose()
