"""A process-wide batcher: coalesces concurrent per-ticket Celery tasks into one batch call.

Why not celery-batches (evidence in ../shared/reference/celery-redis.md, measured on
Celery 5.7 + Redis):

- celery-batches 0.11 pins ``celery<5.7``: it only installs with ``--no-deps`` against
  the Celery this project uses.
- Inside a Batches task ``retry()`` does not work: the batch runs once, the messages are
  acked anyway and the tickets are silently dropped (with ``acks_late``). Time limits,
  ``expires``, ``revoke`` and ``task_reject_on_worker_lost`` are bypassed too.
- When a pool child dies mid-batch, its delivery tags stay counted in the prefetch window
  and the worker can stop consuming forever (measured stall, upstream #73/#99/#107).
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
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(
        self,
        process: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_size: int,
        max_wait_s: float,
        name: str = "batcher",
    ) -> None:
        self._process = process
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._inbox: queue.SimpleQueue[tuple[Item, Future[Result]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._start_lock = threading.Lock()
        self.batches = 0  # counters for logs and tests
        self.items = 0

    def submit(self, item: Item) -> Future[Result]:
        with self._start_lock:
            if not self._started:
                self._thread.start()
                self._started = True
        fut: Future[Result] = Future()
        self._inbox.put((item, fut))
        return fut

    def stop(self) -> None:
        self._inbox.put(None)
        if self._started:
            self._thread.join(timeout=30)

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
                return
            items = [item for item, _ in batch]
            try:
                results = self._process(items)
                if len(results) != len(items):
                    raise RuntimeError(f"batch gave {len(results)} results for {len(items)} items")
            except BaseException as exc:  # every waiting task must hear about it
                logger.warning("batch of %d failed: %s", len(items), exc)
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            finally:
                self.batches += 1
                self.items += len(items)
            for (_, fut), result in zip(batch, results, strict=True):
                fut.set_result(result)
