"""Celery tasks: thin adapters over the triage domain.

One task per ticket (``triage.ticket``, webhooks) or per group of tickets
(``triage.tickets``, file ingest). The task decodes its tickets, hands them to this
process's batcher (one embedding call per batch, see worker/batcher.py), and then settles
each of its own tickets only: done (ack), retry with backoff (transient), or dead-letter to
``triage_failures`` (permanent, or transient past the retry cap).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import celeryd_after_setup, heartbeat_sent, worker_init, worker_shutdown
from sqlalchemy.orm import Session

from config.celery_app import (
    ACTION_TASK,
    SEARCH_TASK,
    TICKET_TASK,
    TICKETS_TASK,
    UPDATE_TASK,
    actions_queue,
    search_queue,
)
from config.redis_client import connect as redis_connect
from config.settings import load_settings
from tickets import db
from tickets import purge as purge_sql
from tickets.errors import FatalError, PermanentError, TransientError
from tickets.marks import product_tags
from tickets.model import Ticket, TicketKey, TicketUpdate
from worker.lifecycle import TicketNotStored, apply_update
from worker.liveness import HeartbeatWriter
from worker.pipeline import ItemResult, WorkItem
from worker.purge import erase_deleted
from worker.runtime import (
    close_runtime,
    get_deliverer,
    get_delivery_runtime,
    get_runtime,
    quietly,
)
from worker.search import search, send_reply

logger = logging.getLogger(__name__)

# A task waits this long for its batch; far above one batch's run time, below the
# visibility timeout, so a wedged batch turns into a retry rather than a redelivery.
BATCH_RESULT_TIMEOUT_S = 120


def backoff_s(retries: int, cap: int) -> float:
    """1, 2, 4 ... seconds up to cap, with ±25 % jitter so retried batches spread out."""
    base: float = min(cap, 2**retries)
    return round(base * random.uniform(0.75, 1.25), 3)


@shared_task(
    name=TICKET_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,  # capped by TRIAGE_MAX_RETRIES below, then dead-lettered, never dropped
)
def triage_ticket(self: Task, message: dict[str, Any], mode: str = "route") -> str:
    """One ticket per message: webhooks, where each ticket should be decided at once."""
    statuses = _triage_messages(self, [message], mode, lambda rest: [rest[0], mode])
    return statuses[0]


@shared_task(
    name=TICKETS_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
)
def triage_tickets(self: Task, messages: list[dict[str, Any]], mode: str = "route") -> list[str]:
    """Several tickets per message: file ingest (`triage ingest`).

    The broker's cost (≈1.5 ms of worker CPU per message) is paid once for the group
    instead of once per ticket. Per-ticket guarantees hold: each ticket still ends as its
    own decision or failure row, a bad ticket fails alone, and a retry re-sends only the
    tickets that met a transient error. A redelivered group (worker killed) is re-run
    whole; the pipeline answers its decided tickets from SQL without deciding them again.
    """
    if not isinstance(messages, list):
        messages = [messages]
    return _triage_messages(self, messages, mode, lambda rest: [rest, mode])


def _triage_messages(
    task: Task,
    messages: list[Any],
    mode: str,
    retry_args: Callable[[list[Any]], list[Any]],
) -> list[str]:
    """Hand each ticket to this process's batcher and settle each one: a status, a failure
    row, or a retry of the task with the tickets that met a transient error."""
    runtime = get_runtime()
    settings = runtime.settings
    attempts = task.request.retries + 1
    statuses: dict[int, str] = {}
    pending: list[tuple[int, Future[ItemResult]]] = []
    for n, message in enumerate(messages):
        try:
            ticket = Ticket.from_message(message)
            if mode not in ("route", "backfill"):
                raise ValueError(f"unknown mode {mode!r}")
        except Exception as exc:
            statuses[n] = _settle_error(task, message, exc, attempts, mode)
            continue
        pending.append((n, runtime.batcher.submit(WorkItem(ticket, mode))))  # type: ignore[arg-type]

    deadline = time.monotonic() + BATCH_RESULT_TIMEOUT_S
    transient: list[tuple[int, BaseException]] = []
    for n, future in pending:
        message = messages[n]
        try:
            result = future.result(timeout=max(0.0, deadline - time.monotonic()))
            if result.error is not None:
                raise result.error
            statuses[n] = result.status
        except (TransientError, TimeoutError) as exc:  # TimeoutError: the batch took too long
            transient.append((n, exc))
        except Exception as exc:
            statuses[n] = _settle_error(task, message, exc, attempts, mode)

    if transient:
        first = transient[0][1]
        if task.request.retries >= settings.max_retries:
            for n, err in transient:
                statuses[n] = _dead_letter(
                    task, messages[n], err, attempts, "gave up after retries: ", mode
                )
        else:
            countdown = backoff_s(task.request.retries, settings.retry_backoff_max_s)
            logger.warning(
                "%d ticket(s), first %s: %s; retry %d/%d in %.1f s",
                len(transient),
                _key_text(messages[transient[0][0]]),
                first or type(first).__name__,
                attempts,
                settings.max_retries,
                countdown,
            )
            rest = [messages[n] for n, _ in transient]
            # Alive, waiting out its countdown: the ledger sweep must not re-send it.
            quietly("touch", runtime.ledger.touch, [_key(m) for m in rest])
            _retry(task, first, countdown, args=retry_args(rest))
    return [statuses[n] for n in range(len(messages))]


@shared_task(
    name=UPDATE_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
)
def triage_update(self: Task, message: dict[str, Any]) -> str:
    """A helpdesk's update of a stored ticket (worker/lifecycle.py). Idempotent: a
    redelivery applies nothing new. An update whose ticket is still in flight retries with
    backoff until the ticket is settled, however long that takes (the ticket's own message
    ends as a row, or as a failure that leaves the update ``unknown``).

    An update that cannot be applied (its text refused by the embedder, say) is logged and
    dropped, never a failure row: ``triage_failures`` holds tickets, one row per key, and an
    update's payload there would replace its ticket's.
    """
    runtime = get_runtime()
    settings = runtime.settings
    try:
        update = TicketUpdate.from_message(message)
        result = apply_update(
            update,
            runtime.services,
            duplicate_tag=settings.actions_duplicate_tag,
            own_tags=product_tags(settings.actions_duplicate_tag, settings.actions_suggest_tag),
            in_flight=runtime.ledger.holds,
            redecide=settings.redecide_on_edit,
        ).result
        if settings.erase_on_delete:
            erase_deleted(
                runtime.services.engine,
                update,
                result,
                redis_client=runtime.redis,
                queues=[settings.queue],
                lexical_snapshot_dir=settings.lexical_snapshot_dir,
            )
        return result
    except TicketNotStored as exc:
        countdown = backoff_s(self.request.retries, settings.retry_backoff_max_s)
        _retry(self, exc, countdown, args=[message])
    except TransientError as exc:
        if self.request.retries >= settings.max_retries:
            logger.error("update of %s dropped after retries: %s", _key_text(message), exc)
            return "failed"
        countdown = backoff_s(self.request.retries, settings.retry_backoff_max_s)
        _retry(self, exc, countdown, args=[message])
    except Exception as exc:
        logger.error("update of %s dropped: %r", _key_text(message), exc, exc_info=exc)
        return "failed"


@shared_task(
    name=SEARCH_TASK,
    bind=True,
    acks_late=False,  # a request lost with its worker only times out on the asking side
    ignore_result=True,
    max_retries=0,
)
def triage_search(self: Task, reply_to: str, text: str, k: int = 5) -> None:
    """`triage search`: rank the stored tickets for ``text`` as this worker ranks a ticket
    (worker/search.py) and put the answer on ``reply_to``, where the command waits."""
    runtime = get_runtime()
    payload: dict[str, Any]
    try:
        answer = search(runtime.services, str(text), max(1, min(int(k), 100)))
        answer = replace(answer, answered_by=self.request.hostname)
        payload = {"ok": True, "answer": answer.to_json()}
    except Exception as exc:  # the asker gets the reason, whatever it is
        logger.warning("search failed: %r", exc)
        payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    send_reply(runtime.redis, reply_to, payload)


@shared_task(
    name=ACTION_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=0,  # retries are the outbox's: the row's next_attempt_at and the sweeper
)
def deliver_action(self: Task, action_id: str) -> str:
    """One attempt at one outbox action (actions/delivery.py). Whatever goes wrong here, the
    action's row stays open in SQL and the sweeper publishes it again."""
    try:
        return get_deliverer().deliver(str(action_id)).status
    except Exception as exc:
        logger.warning("action %s not delivered now: %r", action_id, exc)
        return "error"


_roles: dict[int, str] = {}


def _role() -> str:
    """This process's TRIAGE_WORKER_ROLE (read once per process)."""
    pid = os.getpid()
    if pid not in _roles:
        _roles[pid] = load_settings().worker_role
    return _roles[pid]


@celeryd_after_setup.connect
def _consume_by_role(sender: Any = None, instance: Any = None, **_: Any) -> None:
    """The queues follow TRIAGE_WORKER_ROLE, whatever `-Q` the worker was given: tickets
    and search requests (`all`, `tickets`), outbox deliveries (`all`, `deliveries`)."""
    if instance is None:
        return
    queue = instance.app.conf.task_default_queue
    queues = instance.app.amqp.queues
    role = _role()
    if role == "deliveries":
        queues.select_add(actions_queue(queue))
        queues.deselect([queue, search_queue(queue)])
        return
    queues.select_add(search_queue(queue))
    if role == "all":
        queues.select_add(actions_queue(queue))
    else:
        queues.deselect([actions_queue(queue)])


def _settle_error(task: Task, message: Any, exc: Exception, attempts: int, mode: str) -> str:
    """Dead-letter a ticket whose error no retry can cure. Nothing escapes from here: an
    exception out of the task would ack the message and lose its tickets."""
    if isinstance(exc, PermanentError | FatalError | ValueError):
        return _dead_letter(task, message, exc, attempts, "", mode)
    # A bug, not the ticket's fault; dead-lettered with the traceback logged, for a re-drive.
    logger.error("unexpected error triaging %s", _key_text(message), exc_info=exc)
    return _dead_letter(task, message, exc, attempts, "unexpected error: ", mode)


def _dead_letter(
    task: Task, message: Any, exc: BaseException, attempts: int, prefix: str, mode: str
) -> str:
    key = _key(message)
    reason = f"{prefix}{exc}"
    logger.error("ticket %s failed permanently (%s): %s", key, type(exc).__name__, reason)
    engine = get_runtime().services.engine
    try:
        with Session(engine) as session:
            db.record_failure(
                session,
                key=key,
                error_type=type(exc).__name__,
                reason=reason,
                attempts=attempts,
                payload=message if isinstance(message, dict) else {"raw": repr(message)},
                # `triage redrive` re-publishes with this mode: history stays history.
                mode=mode if mode in ("route", "backfill") else "route",
            )
            # A purged ticket keeps no failure row: its payload is the text.
            purge_sql.guard(session, [key])
            session.commit()
        quietly("clear", get_runtime().ledger.clear, [key])
    except Exception as db_exc:
        # The failure row is the ticket's last trace: never ack without it. The database is
        # what failed, so try again later, for as long as it takes.
        logger.error("could not record the failure of %s: %s; retrying", key, db_exc)
        _retry(
            task,
            db_exc,
            backoff_s(task.request.retries, get_runtime().settings.retry_backoff_max_s),
            max_retries=None,
        )
    return "failed"


def _retry(task: Task, exc: BaseException, countdown: float, **options: Any) -> NoReturn:
    """Task.retry, except that a retry which cannot be published never drops the message.

    Celery publishes the retry as a new message, and if that publish fails (Redis down or
    restarting) it rejects the original WITHOUT requeue: the tickets would be gone (measured:
    a batch of 16 lost in tests/faults/test_redis.py). Requeue it instead; if Redis is still
    unreachable the reject fails too and the message stays unacked, so the visibility
    timeout brings it back.
    """
    try:
        raise task.retry(exc=exc, countdown=countdown, **options)
    except Reject as rejected:
        logger.warning("could not publish the retry (%s); requeueing the message", rejected.reason)
        raise Reject(rejected.reason, requeue=True) from exc


def _key(message: Any) -> TicketKey:
    if isinstance(message, dict):
        return TicketKey(
            str(message.get("source") or "unknown"), str(message.get("ticket_id") or "?")
        )
    return TicketKey("unknown", "?")


def _key_text(message: Any) -> str:
    return str(_key(message))


@worker_init.connect
def _start_runtime(**_: Any) -> None:
    """Load the model and open the store before the first message is taken.

    A worker that cannot run (store owned by another process, another model's collection,
    schema not migrated) must stop with its reason rather than take messages and fail
    each one; Celery only logs exceptions raised in signal handlers, hence the exit.
    """
    try:
        if _role() == "deliveries":
            get_delivery_runtime()
        else:
            get_runtime()
    except (FatalError, RuntimeError) as exc:
        logger.critical("triage worker cannot start: %s", exc)
        os._exit(1)


_heartbeat: HeartbeatWriter | None = None
_heartbeat_lock = threading.Lock()


@heartbeat_sent.connect
def _beat(sender: Any = None, **_: Any) -> None:
    """The consumer's event heartbeat (every 2 s while connected): this worker's beat in
    Redis for readiness and `triage doctor` (worker/liveness.py)."""
    global _heartbeat
    if _role() == "deliveries":
        return  # the beat tells readers about ticket workers (their model, their batches)
    try:
        with _heartbeat_lock:
            if _heartbeat is None:
                runtime = get_runtime()
                settings = runtime.settings
                client = redis_connect(settings, timeout_s=1)
                name = getattr(getattr(sender, "eventer", None), "hostname", None)
                _heartbeat = HeartbeatWriter(
                    client, settings.queue, name or f"pid{os.getpid()}", runtime.facts
                )
            writer = _heartbeat
        writer.pulse()
    except Exception as exc:  # never into the consumer's loop
        logger.warning("worker heartbeat failed: %r", exc)


@worker_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    with _heartbeat_lock:
        if _heartbeat is not None:
            _heartbeat.stop()
    close_runtime()
