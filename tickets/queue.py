"""The message contract: tickets onto the Redis queue as Celery messages, pipelined.

One message per ticket (webhooks, the ingest API), or one per group of tickets for file
ingest (``per_message``), where the broker's per-message cost would otherwise be a quarter
of the worker's CPU (docs/performance.md). Messages name their task (config/celery_app.py)
instead of importing it, so a producer never loads the worker's model or clients. Every
publisher uses :func:`publish`: the producers, the workers' ledger sweep and `triage redrive`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Literal

import redis
from celery import Celery
from kombu.exceptions import KombuError

from config.celery_app import TICKET_TASK, TICKETS_TASK, UPDATE_TASK
from config.settings import mask_url
from tickets.ledger import Ledger
from tickets.model import Ticket, TicketUpdate

# kombu 5.7's Producer.batch pipelines publishes (kombu/messaging.py): ≈2,100 vs ≈850
# messages/s one by one, measured with Celery 5.7 on a 2-core VM.
PUBLISH_BATCH = 500


class BrokerUnavailable(Exception):
    """Redis could not be reached or refused the publish."""


def publish(
    app: Celery,
    tickets: Iterable[Ticket],
    *,
    mode: Literal["route", "backfill"] = "route",
    queue: str | None = None,
    retry_policy: dict[str, float] | None = None,
    per_message: int = 1,
    ledger: Ledger | None = None,
) -> Iterator[Ticket]:
    """Publish the tickets, ``per_message`` to a message; yield each once it is handed to
    the broker (for progress). With a ``ledger`` (every producer of the product passes
    one), each chunk is written to it first: a message lost in transit is then published
    again by the workers' sweep (tickets/ledger.py)."""

    if per_message < 1:
        raise ValueError(f"per_message must be at least 1, not {per_message}")
    queue = queue or app.conf.task_default_queue
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH):
            for chunk in _batched(tickets, per_message * max(1, PUBLISH_BATCH // per_message)):
                if ledger is not None:
                    try:
                        ledger.record(chunk, mode)
                    except redis.RedisError as exc:
                        raise BrokerUnavailable(f"cannot record tickets in Redis: {exc}") from exc
                yield from _send(app, producer, chunk, mode, queue, retry_policy, per_message)
    except (KombuError, OSError, redis.RedisError) as exc:
        # KombuError: also kombu's BatchPublishError ("delivery is uncertain") when the
        # connection dies mid-batch, as when a Sentinel master stops: the ledger entry
        # covers a message that did get through. RedisError: a reply kombu does not retry,
        # e.g. NOREPLICAS from a master short of replicas (min-replicas-to-write).
        where = mask_url(str(app.conf.broker_url))
        raise BrokerUnavailable(f"cannot publish to Redis at {where}: {exc}") from exc


def publish_update(app: Celery, update: TicketUpdate, *, queue: str | None = None) -> None:
    """Put a helpdesk's update on the tickets' queue (worker/lifecycle.py applies it).

    No ledger: the webhook is answered only after the publish, so a failed one is the
    helpdesk's to retry (503), and applying an update twice changes nothing the second time.
    """
    queue = queue or app.conf.task_default_queue
    stamp = (update.updated_at or update.received_at).timestamp()
    try:
        app.send_task(
            UPDATE_TASK,
            args=[update.to_message()],
            queue=queue,
            task_id=f"update:{update.key.as_id()}:{stamp:.6f}",
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except (KombuError, OSError, redis.RedisError) as exc:
        where = mask_url(str(app.conf.broker_url))
        raise BrokerUnavailable(f"cannot publish to Redis at {where}: {exc}") from exc


def _send(
    app: Celery,
    producer: Any,
    tickets: list[Ticket],
    mode: str,
    queue: str,
    retry_policy: dict[str, float] | None,
    per_message: int,
) -> Iterator[Ticket]:
    for group in _batched(tickets, per_message):
        first = group[0]
        # The task id names the (first) ticket: Flower and logs show which it is.
        task_id = f"{first.key.as_id()}:{first.received_at.timestamp():.6f}"
        args: list[Any]
        if per_message == 1:
            name, args = TICKET_TASK, [first.to_message(), mode]
        else:
            name, args = TICKETS_TASK, [[t.to_message() for t in group], mode]
            task_id += f"+{len(group) - 1}"
        app.send_task(
            name,
            args=args,
            queue=queue,
            producer=producer,
            task_id=task_id,
            retry=True,
            retry_policy=retry_policy,
        )
        yield from group


def _batched(items: Iterable[Ticket], n: int) -> Iterator[list[Ticket]]:  # itertools' in 3.12
    it = iter(items)
    while group := list(islice(it, n)):
        yield group
