"""Put tickets on the Redis queue: one Celery message per ticket, pipelined.

Messages name the task (``triage.ticket``) instead of importing it, so producers never
load the worker's model or clients.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Literal

from celery import Celery
from kombu.exceptions import OperationalError

from worker.tickets import Ticket

TASK_NAME = "triage.ticket"
# kombu 5.7's Producer.batch pipelines publishes: ≈2,100 vs ≈850 messages/s one by one
# (../shared/reference/celery-redis.md §4).
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
) -> Iterator[Ticket]:
    """Publish each ticket; yield it once it is handed to the broker (for progress)."""
    queue = queue or app.conf.task_default_queue
    try:
        with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH):
            for ticket in tickets:
                app.send_task(
                    TASK_NAME,
                    args=[ticket.to_message(), mode],
                    queue=queue,
                    producer=producer,
                    # The task id is the ticket key: Flower and logs show which ticket it is.
                    task_id=f"{ticket.key.as_id()}:{ticket.received_at.timestamp():.6f}",
                    retry=True,
                    retry_policy=retry_policy,
                )
                yield ticket
    except (OperationalError, OSError) as exc:
        raise BrokerUnavailable(f"cannot publish to Redis at {app.conf.broker_url}: {exc}") from exc
