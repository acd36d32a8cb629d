"""Routing rules as pure functions: no broker, no store."""

from __future__ import annotations

from typing import Any

import numpy as np

from tickets.model import TicketKey
from worker.routing import Outcome, Thresholds, decide
from worker.store import Neighbour

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


def test_hybrid_ranking_routes_on_the_cosine_of_the_ticket_it_ranks_first() -> None:
    """A lexical match ranked above a closer one: the row names it, scores it and routes
    on it; the closer one is still shown, second."""
    me, lexical_match, closer, far = k("new"), k("lexical"), k("closer"), k("far")
    stored = [
        [
            Neighbour(closer, 0.80, closer, "manual"),
            Neighbour(lexical_match, 0.65, lexical_match, "manual"),
            Neighbour(far, 0.10, far, "manual"),
        ]
    ]
    vectors = _unit([1, 0, 0])
    [out] = decide(
        [me],
        vectors,
        stored,
        decide_mask=[True],
        thresholds=TH,
        top_k=5,
        lexical=[{lexical_match: 20.0, closer: 0.5}],
        alpha=0.7,
        pool=20,
    )
    assert out is not None and out.ranked_by == "hybrid"
    assert [m.key for m in out.matches] == [lexical_match, closer, far]
    assert out.best is not None and out.best.key == lexical_match
    assert out.score == out.best.score == 0.65
    assert out.route == TH.route(0.65) == "manual" and out.canonical == me
    fused = [m.fused for m in out.matches]
    assert None not in fused and fused == sorted(fused, reverse=True)  # type: ignore[type-var]

    # Cosine ranking over the same candidates: the closer one first, suggested.
    [dense] = decide([me], vectors, stored, decide_mask=[True], thresholds=TH, top_k=5)
    assert dense is not None and dense.ranked_by == "cosine"
    assert dense.best is not None and dense.best.key == closer and dense.best.fused is None
    assert (dense.route, dense.score) == ("suggest", 0.80)


def test_a_planned_outcome_is_kept_unless_its_candidates_or_a_ranked_batch_mate_changed() -> None:
    # a, b twins; c unlike both, nearest to a stored x. Top 1, planned with no other
    # history: b duplicates a, a and c are manual.
    vecs = _unit([1, 0, 0], [1, 0.05, 0], [0, 1, 0])
    keys = [k("a"), k("b"), k("c")]
    x = [Neighbour(k("x"), 0.5, k("x"), "manual")]

    def route(stored: list[list[Neighbour]], **again: Any) -> list[Outcome | None]:
        return decide(keys, vecs, stored, decide_mask=[True] * 3, thresholds=TH, top_k=1, **again)

    planned = route([[], [], x])
    assert [o.route for o in planned if o] == ["manual", "duplicate", "manual"]
    # A root committed meanwhile enters a's candidates only: a is routed again (now a
    # duplicate of the root), and b, which ranked a, follows it to the root; c is kept.
    root = [Neighbour(k("root"), 0.95, k("root"), "manual")]
    again = route([root, [], x], planned=planned, redo=[True, False, False])
    assert [o.canonical for o in again if o] == [k("root"), k("root"), k("c")]
    assert again[1] is not planned[1] and again[2] is planned[2]
    # Routed again to the same route and canonical ticket: the later outcomes are kept.
    same = route([[], [], x], planned=planned, redo=[True, False, False])
    assert same[0] is not planned[0] and same[0] == planned[0]
    assert same[1] is planned[1] and same[2] is planned[2]
