"""Celery tasks: thin adapters over the triage domain.

One task per ticket (``triage.ticket``). The task decodes the message, hands the ticket
to this process's batcher (one embedding call per batch, see worker/batcher.py), and
then decides about its own message only: return (ack), retry with backoff (transient),
or dead-letter to ``triage_failures`` (permanent, or transient past the retry cap).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any, NoReturn

from celery import Task, shared_task
from celery.exceptions import Reject
from celery.signals import worker_init, worker_shutdown
from sqlalchemy.orm import Session

from worker import db
from worker.errors import FatalError, PermanentError, TransientError
from worker.pipeline import WorkItem
from worker.runtime import close_runtime, get_runtime
from worker.tickets import Ticket, TicketKey

logger = logging.getLogger(__name__)

TASK_NAME = "triage.ticket"
# A task waits this long for its batch; far above one batch's run time, below the
# visibility timeout, so a wedged batch turns into a retry rather than a redelivery.
BATCH_RESULT_TIMEOUT_S = 120


def backoff_s(retries: int, cap: int) -> float:
    """1, 2, 4 ... seconds up to cap, with ±25 % jitter so retried batches spread out."""
    base: float = min(cap, 2**retries)
    return round(base * random.uniform(0.75, 1.25), 3)


@shared_task(
    name=TASK_NAME,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,  # capped by TRIAGE_MAX_RETRIES below, then dead-lettered, never dropped
)
def triage_ticket(self: Task, message: dict[str, Any], mode: str = "route") -> str:
    runtime = get_runtime()
    settings = runtime.settings
    attempts = self.request.retries + 1
    try:
        ticket = Ticket.from_message(message)
        if mode not in ("route", "backfill"):
            raise ValueError(f"unknown mode {mode!r}")
        result = runtime.batcher.submit(WorkItem(ticket, mode)).result(  # type: ignore[arg-type]
            timeout=BATCH_RESULT_TIMEOUT_S
        )
        if result.error is not None:
            raise result.error
        return result.status
    except (TransientError, TimeoutError) as exc:  # TimeoutError: the batch took too long
        if self.request.retries >= settings.max_retries:
            return _dead_letter(self, message, exc, attempts, "gave up after retries: ", mode)
        countdown = backoff_s(self.request.retries, settings.retry_backoff_max_s)
        logger.warning(
            "ticket %s: %s; retry %d/%d in %.1f s",
            _key_text(message),
            exc or type(exc).__name__,
            attempts,
            settings.max_retries,
            countdown,
        )
        _retry(self, exc, countdown)
    except (PermanentError, FatalError, ValueError) as exc:
        return _dead_letter(self, message, exc, attempts, "", mode)
    except Exception as exc:
        # A bug, not the ticket's fault; still, an unhandled exception would ack the message
        # and lose the ticket. Dead-letter it with the traceback logged, for a re-drive.
        logger.exception("unexpected error triaging %s", _key_text(message))
        return _dead_letter(self, message, exc, attempts, "unexpected error: ", mode)


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
            session.commit()
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
    restarting) it rejects the original WITHOUT requeue: the ticket would be gone (measured:
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
        get_runtime()
    except (FatalError, RuntimeError) as exc:
        logger.critical("triage worker cannot start: %s", exc)
        os._exit(1)


@worker_shutdown.connect
def _stop_runtime(**_: Any) -> None:
    close_runtime()
