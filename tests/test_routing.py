"""Routing rules as pure functions: no broker, no store."""

from __future__ import annotations

import numpy as np

from worker.routing import Thresholds, decide
from worker.store import Neighbour
from worker.tickets import TicketKey

TH = Thresholds(duplicate=0.85, suggest=0.70)


def _unit(*rows: list[float]) -> np.ndarray:
    m = np.asarray(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def k(i: str) -> TicketKey:
    return TicketKey("t", i)


def test_thresholds() -> None:
    assert TH.route(None) == "manual"
    assert TH.route(0.85) == "duplicate"
    assert TH.route(0.8499) == "suggest"
    assert TH.route(0.70) == "suggest"
    assert TH.route(0.6999) == "manual"


def test_in_batch_duplicate_points_at_the_earlier_ticket() -> None:
    vecs = _unit([1, 0, 0], [0.99, 0.05, 0], [0, 1, 0])
    out = decide(
        [k("a"), k("b"), k("c")], vecs, [[], [], []], decide_mask=[True] * 3, thresholds=TH, top_k=5
    )
    assert [o.route for o in out if o] == ["manual", "duplicate", "manual"]
    assert out[0] is not None and out[0].score is None  # first ticket: no history
    assert out[1] is not None and out[1].canonical == k("a") and out[1].best is not None
    assert out[1].best.key == k("a")


def test_duplicate_of_a_duplicate_points_at_the_root() -> None:
    vecs = _unit([1, 0.0, 0], [1, 0.1, 0], [1, 0.2, 0])
    stored = [[Neighbour(k("root"), 0.95, k("root"), "manual")], [], []]
    out = decide(
        [k("a"), k("b"), k("c")], vecs, stored, decide_mask=[True] * 3, thresholds=TH, top_k=5
    )
    assert all(o is not None and o.route == "duplicate" for o in out)
    assert [o.canonical for o in out if o] == [k("root")] * 3


def test_never_matched_with_itself_or_a_later_ticket() -> None:
    vecs = _unit([1, 0, 0], [1, 0, 0])
    stored = [[Neighbour(k("a"), 1.0, k("a"), "manual")], []]  # its own vector (a redelivery)
    out = decide([k("a"), k("b")], vecs, stored, decide_mask=[True, True], thresholds=TH, top_k=5)
    assert out[0] is not None and out[0].route == "manual" and out[0].matches == ()
    assert out[1] is not None and out[1].best is not None and out[1].best.key == k("a")


def test_history_counts_as_earlier_but_is_not_routed() -> None:
    vecs = _unit([1, 0, 0], [1, 0.01, 0])
    out = decide(
        [k("h"), k("n")], vecs, [[], []], decide_mask=[False, True], thresholds=TH, top_k=3
    )
    assert out[0] is None
    assert out[1] is not None and out[1].route == "duplicate" and out[1].canonical == k("h")


def test_top_k_caps_and_orders_matches() -> None:
    vecs = _unit([1, 0, 0])
    stored = [
        [Neighbour(k(str(i)), s, k(str(i)), "manual") for i, s in enumerate([0.1, 0.9, 0.5, 0.7])]
    ]
    out = decide([k("q")], vecs, stored, decide_mask=[True], thresholds=TH, top_k=2)
    assert out[0] is not None
    assert [m.score for m in out[0].matches] == [0.9, 0.7]


def test_route_shown_merges_only_into_the_top_ranked_match() -> None:
    t = Thresholds(0.85, 0.70)
    assert t.route_shown([]) == ("manual", None)
    assert t.route_shown([0.9, 0.95]) == ("duplicate", 0.9)
    assert t.route_shown([0.6, 0.9]) == ("suggest", 0.9)  # a closer match ranked lower
    assert t.route_shown([0.6, 0.65]) == ("manual", 0.65)
    for top in (0.1, 0.72, 0.86):  # dense ranking: the same as routing the top cosine
        assert t.route_shown([top, top - 0.05]) == (t.route(top), top)
