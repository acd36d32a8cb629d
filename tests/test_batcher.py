"""The process-wide batcher: coalescing, the two-stage overlap, and failures kept per batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from worker.batcher import Batcher


def test_items_are_coalesced_up_to_the_batch_size() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def process(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        seen.append(list(items))
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(process, max_size=3, max_wait_s=0.5)
    futures = [batcher.submit(i) for i in range(7)]
    gate.set()
    assert [f.result(5) for f in futures] == [i * 10 for i in range(7)]
    assert [len(b) for b in seen] in ([1, 3, 3], [3, 3, 1])  # the first may leave alone
    assert [i for b in seen for i in b] == list(range(7)) and batcher.batches == len(seen)
    batcher.stop()


def test_the_next_batch_is_prepared_while_the_current_one_finishes() -> None:
    second_prepared = threading.Event()
    order: list[str] = []

    def prepare(items: Sequence[int]) -> list[int]:
        order.append(f"prepare {list(items)}")
        if items[0] == 2:
            second_prepared.set()
        return list(items)

    def finish(prepared: list[int]) -> list[int]:
        if prepared[0] == 1:
            # Stage 2 of batch 1 only ends once stage 1 of batch 2 has run: they overlap.
            assert second_prepared.wait(5), "stage 1 did not run during stage 2"
        order.append(f"finish {prepared}")
        return [-i for i in prepared]

    batcher: Batcher[int, int] = Batcher(prepare, finish=finish, max_size=1, max_wait_s=0)
    first, second = batcher.submit(1), batcher.submit(2)
    assert (first.result(10), second.result(10)) == (-1, -2)
    # Batches still finish in arrival order, so decisions stay sequential.
    assert order.index("finish [1]") < order.index("finish [2]")
    assert order.index("prepare [2]") < order.index("finish [1]")
    batcher.stop()


@pytest.mark.parametrize("stage", ["prepare", "finish"])
def test_a_failing_batch_fails_its_own_items_only(stage: str) -> None:
    def prepare(items: Sequence[int]) -> list[int]:
        if stage == "prepare" and 13 in items:
            raise ValueError("unlucky")
        return list(items)

    def finish(prepared: list[int]) -> list[int]:
        if stage == "finish" and 13 in prepared:
            raise ValueError("unlucky")
        return prepared

    batcher: Batcher[int, int] = Batcher(prepare, finish=finish, max_size=1, max_wait_s=0)
    futures = {i: batcher.submit(i) for i in (12, 13, 14)}
    assert futures[12].result(5) == 12 and futures[14].result(5) == 14
    with pytest.raises(ValueError, match="unlucky"):
        futures[13].result(5)
    batcher.stop()


def test_stop_lets_queued_items_finish() -> None:
    batcher: Batcher[int, int] = Batcher(
        lambda items: list(items), finish=lambda p: p, max_size=2, max_wait_s=0.05
    )
    futures = [batcher.submit(i) for i in range(5)]
    batcher.stop()
    assert [f.result(5) for f in futures] == list(range(5))
