"""Which actions a decision gets, staged in its transaction and published after the commit.

The worker calls :meth:`Outbox.stage` inside the transaction that writes the decision rows:
the action rows commit with them or not at all. The ids of what committed are kept, and
:meth:`Outbox.publish_committed`, called once the decision lock is released, puts one
delivery message per action on ``<TRIAGE_QUEUE>.actions``. A crash between the commit and
the publish loses no action: the row stays ``pending`` and the sweeper (actions/sweeper.py)
publishes it once its ``next_attempt_at`` has passed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.orm import Session

from actions import webhook
from actions.helpdesks import base as helpdesks
from config.celery_app import ACTION_TASK, actions_queue, create_app
from config.settings import Settings
from tickets import outbox
from tickets.decisions import decision_out

logger = logging.getLogger(__name__)

# kombu's Producer.batch pipelines the publishes (tickets/queue.py measured it for tickets).
PUBLISH_BATCH = 500


def new_action_id() -> str:
    """A fresh idempotency id: ``msg_`` and 32 hex digits (no ``.``, which the signed
    content uses as its delimiter)."""
    return f"msg_{uuid.uuid4().hex}"


def actions_for(
    decision_rows: Sequence[dict[str, Any]], settings: Settings, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The outbox rows of these decisions (the values the worker inserts): one per decision
    and configured webhook, and one write-back into the decision's own helpdesk when that
    helpdesk's credential is set; none when nothing is configured."""
    targets = settings.outbound_webhook_url
    vendors = settings.writeback_vendors
    if not (targets or vendors) or not decision_rows:
        return []
    now = now or datetime.now(UTC)
    status = outbox.DRY_RUN if settings.actions_dry_run else outbox.PENDING
    # Not picked up within a lease: the sweeper publishes it again.
    due = now + timedelta(seconds=settings.actions_lease_s)
    rows = []
    for decision in decision_rows:
        payload = decision_out(decision).model_dump(mode="json")
        kinds = [(webhook.KIND, target) for target in targets]
        if vendors and helpdesks.wants_action(decision, settings):
            kinds.append((helpdesks.KIND, decision["source"]))
        for kind, target in kinds:
            rows.append(
                {
                    "action_id": new_action_id(),
                    "source": decision["source"],
                    "ticket_id": decision["ticket_id"],
                    "kind": kind,
                    "target": target,
                    "payload": payload,
                    "status": status,
                    "attempts": 0,
                    "next_attempt_at": due,
                    "created_at": now,
                }
            )
    return rows


class Publisher:
    """Delivery messages onto ``<queue>.actions``, through this process's own Celery app."""

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.queue = actions_queue(settings.queue)
        self._settings = settings
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, action_ids: Iterable[str]) -> int:
        ids = list(action_ids)
        if not ids:
            return 0
        with self._lock:
            if self._app is None:
                self._app = create_app(self._settings)
        app = self._app
        with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH):
            for action_id in ids:
                # The task id is the action's: Flower and logs show which action it is.
                app.send_task(
                    ACTION_TASK,
                    args=[action_id],
                    queue=self.queue,
                    producer=producer,
                    task_id=f"{action_id}:{uuid.uuid4().hex[:8]}",
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.2},
                )
        return len(ids)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


class Outbox:
    """The worker's side of the outbox: stage with the decision, publish after the commit."""

    def __init__(self, settings: Settings, publish: Callable[[list[str]], object]) -> None:
        self.settings = settings
        # Where the ids of committed actions go (a Publisher; the sweeper shares it).
        self.publish = publish
        self._committed: list[str] = []
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.settings.outbound_webhook_url or self.settings.writeback_vendors)

    def stage(
        self, session: Session, decision_rows: Sequence[dict[str, Any]], *, again: bool = False
    ) -> None:
        """Insert the actions of these decisions in ``session``'s transaction; once it
        commits, their ids wait for :meth:`publish_committed`. ``again``: decisions that
        changed (a re-decision) replace the actions queued for them."""
        rows = actions_for(decision_rows, self.settings)
        if not rows:
            return
        (outbox.restage if again else outbox.stage)(session, rows)
        ids = [r["action_id"] for r in rows if r["status"] == outbox.PENDING]
        if ids:
            # Only what committed is published (a rolled-back batch is retried whole).
            event.listen(session, "after_commit", lambda _s: self._add(ids), once=True)

    def _add(self, ids: list[str]) -> None:
        with self._lock:
            self._committed.extend(ids)

    def publish_committed(self) -> int:
        """Publish the actions committed since the last call; on a broker error they stay
        pending in SQL and the sweeper publishes them later."""
        with self._lock:
            ids, self._committed = self._committed, []
        if not ids:
            return 0
        try:
            self.publish(ids)
        except Exception as exc:  # the decisions are committed: nothing may fail them now
            logger.warning("could not publish %d action(s), the sweeper will: %s", len(ids), exc)
            return 0
        return len(ids)
