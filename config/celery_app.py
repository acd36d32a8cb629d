"""The Celery app: broker, queue, routes and delivery options, all in one place.

``celery -A config.celery_app worker`` and ``triage worker`` run the same app. Its
configuration is read from the settings when Celery first needs it (``on_configure``),
not at import, so a bad TRIAGE_* value stops the worker with a message naming it.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

from config.broker import SENTINEL_TRANSPORT, TRANSPORT
from config.redis_client import sentinel_options
from config.settings import Settings, SettingsError, load_settings

# The tasks by name: producers publish a message naming its task (tickets/queue.py) and
# never import the worker's code, its model or its clients.
TICKET_TASK = "triage.ticket"  # one ticket per message (webhooks, the ingest API)
TICKETS_TASK = "triage.tickets"  # a group of tickets per message (file ingest)
SEARCH_TASK = "triage.search"  # `triage search`, answered by a running worker
UPDATE_TASK = "triage.update"  # a helpdesk's report that a stored ticket changed
ACTION_TASK = "triage.action"  # one outbox action to deliver (actions/, tickets/outbox.py)


def search_queue(queue: str) -> str:
    """The queue of search requests answered by the workers of ``queue``."""
    return f"{queue}.search"


def actions_queue(queue: str) -> str:
    """The queue of outbox deliveries of the workers of ``queue``: a delivery never waits
    behind a backlog of tickets, nor a ticket behind a slow receiver."""
    return f"{queue}.actions"


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {}
    sentinel: dict[str, Any] = {}
    if urlsplit(settings.redis_url).scheme == "redis":
        # kombu's Redis transport with the fix that keeps a worker alive through a Redis
        # restart under load (config/broker.py). rediss:// keeps kombu's own, for its TLS.
        transport["broker_transport"] = TRANSPORT
    elif settings.uses_sentinel:
        # kombu's Sentinel transport (the same fix): it reads every `;`-listed sentinel from
        # the URL and asks them for this master (Celery docs, "Using Redis").
        transport["broker_transport"] = SENTINEL_TRANSPORT
        sentinel = {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": sentinel_options(settings),
        }
    return {
        "broker_url": settings.redis_url,
        **transport,
        "broker_connection_retry_on_startup": True,
        # Results go to SQL; nobody reads Celery results.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue,
        # Tickets, and the small queues of `triage search` requests and of outbox
        # deliveries that every worker also consumes (worker/tasks.py): neither waits behind
        # a backlog of tickets, and the backlog's depth (backpressure, the ledger sweep)
        # counts tickets only.
        "task_queues": [
            Queue(settings.queue),
            Queue(search_queue(settings.queue)),
            Queue(actions_queue(settings.queue)),
        ],
        "task_routes": {
            SEARCH_TASK: {"queue": search_queue(settings.queue)},
            ACTION_TASK: {"queue": actions_queue(settings.queue)},
            "triage.*": {"queue": settings.queue},
        },
        # At-least-once: a message is acked only after its ticket is decided or
        # dead-lettered; a killed worker's tickets come back (writes are idempotent).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # The threads pool lets one process's tasks share the batcher and the model (see
        # worker/batcher.py). Two batches' worth of threads: while one batch is embedded and
        # stored, the next one fills.
        "worker_pool": "threads",
        "worker_concurrency": 2 * settings.batch_size,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu 5.7 restores unacked messages every interval x throttle seconds; its
            # default (~100 s) would leave a killed worker's tickets waiting that long.
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            # The restore runs under a Redis mutex that expires after this many seconds
            # (kombu's default: 300). A connection cut in the middle of a restore leaves the
            # mutex held until then, and with it every unacked message of the queue: measured
            # in tests/faults/test_redis.py, messages whose acks were lost in the cut stayed
            # unacked for minutes. A restore takes milliseconds; one visibility timeout
            # (at most a minute) is ample.
            "unacked_mutex_expire": min(60, settings.visibility_timeout_s),
            **sentinel,
        },
        "worker_send_task_events": True,  # for Flower
        "task_send_sent_event": True,
        "include": ["worker.tasks"],
    }


def create_app(settings: Settings | None = None) -> Celery:
    app = Celery("triage", set_as_current=settings is None)
    if settings is not None:
        app.conf.update(celery_config(settings))
    else:

        def _configure(sender: Celery, **_: Any) -> None:
            try:
                sender.conf.update(celery_config(load_settings()))
            except SettingsError as exc:
                # Celery logs and swallows an Exception from a signal handler, then runs on
                # its defaults (amqp://localhost): a typo must stop the worker instead.
                print(f"triage: {exc}", file=sys.stderr)
                raise SystemExit(2) from None

        app.on_configure.connect(_configure, weak=False)
    return app


app = create_app()
