"""A process-wide batcher: coalesces concurrent per-ticket Celery tasks into one batch call.

Why not celery-batches (https://github.com/clokep/celery-batches; measured on Celery 5.7 +
Redis):

- celery-batches 0.11 pins ``celery<5.7``: it only installs with ``--no-deps`` against
  the Celery this project uses.
- Inside a Batches task ``retry()`` does not work: the batch runs once, the messages are
  acked anyway and the tickets are silently dropped (with ``acks_late``). Time limits,
  ``expires``, ``revoke`` and ``task_reject_on_worker_lost`` are bypassed too.
- When a pool child dies mid-batch, its delivery tags stay counted in the prefetch window
  and the worker can stop consuming forever (measured stall; celery-batches#73, #99, #107).
- Its throughput gain is small: ≈550 vs ≈440 messages/s, because the per-message broker
  cost (≈1.5 ms CPU in the main process) is paid either way.

So each ticket stays an ordinary Celery task (``acks_late``, per-ticket retries with
backoff, reject-on-worker-lost, time limits all keep working) and runs on the ``threads``
pool. Each task thread hands its ticket to this batcher and waits; one batcher thread
collects up to ``max_size`` tickets, or whatever arrived within ``max_wait_s`` of the
first, and makes one call for all of them. The ticket's own task then acks, retries or
dead-letters its own message.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Collects items into batches and runs ``process`` on each, in arrival order.

    With ``finish``, processing has two stages run by two threads: ``process`` (stage 1,
    here: text preparation and embedding) hands its output to ``finish`` (stage 2: the
    critical section with the stores). Stage 1 of the next batch then runs while stage 2
    of the current one does, so the model and the stores overlap instead of taking turns;
    batches still finish one at a time, in order, so decisions stay sequential.
    """

    def __init__(
        self,
        process: Callable[[Sequence[Item]], Any],
        *,
        max_size: int,
        max_wait_s: float,
        name: str = "batcher",
        finish: Callable[[Any], Sequence[Result]] | None = None,
    ) -> None:
        self._process = process
        self._finish = finish
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._inbox: queue.SimpleQueue[tuple[Item, Future[Result]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # One prepared batch at most waits for stage 2: more would only hold vectors longer.
        self._handoff: queue.Queue[tuple[list[tuple[Item, Future[Result]]], Any] | None] = (
            queue.Queue(maxsize=1)
        )
        self._finisher = threading.Thread(
            target=self._run_finish, name=f"{name}-finish", daemon=True
        )
        self._started = False
        self._start_lock = threading.Lock()
        self.batches = 0  # counters for logs and tests
        self.items = 0

    def submit(self, item: Item) -> Future[Result]:
        with self._start_lock:
            if not self._started:
                self._thread.start()
                if self._finish is not None:
                    self._finisher.start()
                self._started = True
        fut: Future[Result] = Future()
        self._inbox.put((item, fut))
        return fut

    def stop(self) -> None:
        self._inbox.put(None)
        if self._started:
            self._thread.join(timeout=30)
            if self._finish is not None:
                self._finisher.join(timeout=30)

    def _collect(self) -> list[tuple[Item, Future[Result]]] | None:
        first = self._inbox.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                nxt = (
                    self._inbox.get(timeout=max(remaining, 0))
                    if remaining > 0
                    else self._inbox.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is None:
                self._inbox.put(None)  # stop after this batch
                break
            batch.append(nxt)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                if self._finish is not None:
                    self._handoff.put(None)
                return
            items = [item for item, _ in batch]
            try:
                output = self._process(items)
            except BaseException as exc:  # every waiting task must hear about it
                self._fail(batch, exc)
                continue
            if self._finish is None:
                self._deliver(batch, output)
            else:
                self._handoff.put((batch, output))

    def _run_finish(self) -> None:
        assert self._finish is not None
        while True:
            handed = self._handoff.get()
            if handed is None:
                return
            batch, prepared = handed
            try:
                results = self._finish(prepared)
            except BaseException as exc:
                self._fail(batch, exc)
                continue
            self._deliver(batch, results)

    def _deliver(self, batch: list[tuple[Item, Future[Result]]], results: Sequence[Result]) -> None:
        self.batches += 1
        self.items += len(batch)
        if len(results) != len(batch):
            self._fail(
                batch, RuntimeError(f"batch gave {len(results)} results for {len(batch)} items")
            )
            return
        for (_, fut), result in zip(batch, results, strict=True):
            fut.set_result(result)

    def _fail(self, batch: list[tuple[Item, Future[Result]]], exc: BaseException) -> None:
        logger.warning("batch of %d failed: %s", len(batch), exc)
        for _, fut in batch:
            fut.set_exception(exc)
