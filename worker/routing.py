"""Routing: from similarity scores to `duplicate` / `suggest` / `manual`. Pure functions.

Sequential semantics: a batch is decided as if its tickets arrived one
at a time, in order. Ticket *i* is compared with everything stored before the batch
(the vector store's neighbours) and with tickets 0..i-1 of the same batch, never with
itself or with later tickets.

A duplicate of a duplicate points at the root: the canonical ticket of a `duplicate` is
its best match's canonical ticket; every other ticket is its own canonical (the root of
a possible chain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from tickets.model import TicketKey
from worker.embedding import Vectors
from worker.hybrid import fuse
from worker.store import Neighbour

Route = Literal["duplicate", "suggest", "manual"]


@dataclass(frozen=True)
class Thresholds:
    duplicate: float
    suggest: float

    def for_queue(self, queue: str | None) -> Thresholds:
        """One pair for every queue (a ThresholdTable gives per-queue pairs)."""
        return self

    def route(self, score: float | None) -> Route:
        if score is None:
            return "manual"  # no history yet
        if score >= self.duplicate:
            return "duplicate"
        if score >= self.suggest:
            return "suggest"
        return "manual"


RankedBy = Literal["hybrid", "cosine"]


@dataclass(frozen=True)
class Bar:
    """What one more candidate must score to change a ticket's ranking: a cosine of at least
    ``dense`` or a BM25 score above 0 and at least ``lexical`` (``-inf`` / ``0`` when that
    side of the pool is not full, ``inf``: never). ``ranked`` are the candidates the
    ranking read (the pool; with cosine alone, the matches): removing any other changes
    nothing either."""

    dense: float
    lexical: float
    ranked: frozenset[TicketKey]


@dataclass(frozen=True)
class Outcome:
    """One routed ticket. ``matches`` are in the order the agent reads them (``ranked_by``:
    fused dense + BM25, or cosine alone); the first is the matched ticket, ``score`` is its
    cosine, and the route is ``Thresholds.route(score)``: a row never routes on one ticket
    and names another, and its score always says why it has its route."""

    key: TicketKey
    route: Route
    score: float | None  # the cosine of matches[0]; None when there is no match
    matches: tuple[Neighbour, ...]  # best-ranked first, at most top_k
    canonical: TicketKey
    reason: str | None = None  # set when the route is not the score's (coverage guard)
    ranked_by: RankedBy = "cosine"
    bar: Bar | None = field(default=None, compare=False, repr=False)

    @property
    def best(self) -> Neighbour | None:
        return self.matches[0] if self.matches else None


def decide(
    keys: Sequence[TicketKey],
    vectors: Vectors,
    stored: Sequence[Sequence[Neighbour]],
    *,
    decide_mask: Sequence[bool],
    thresholds: Thresholds | Sequence[Thresholds],
    top_k: int,
    unreadable: Sequence[str | None] | None = None,
    lexical: Sequence[Mapping[TicketKey, float]] | None = None,
    alpha: float = 1.0,
    pool: int | None = None,
    offered: Sequence[bool] | None = None,
    planned: Sequence[Outcome | None] | None = None,
    redo: Sequence[bool] | None = None,
) -> list[Outcome | None]:
    """Decide, in order, every ticket whose ``decide_mask`` is true.

    ``stored[i]`` are ticket i's neighbours from the vector store (may include itself on a
    redelivery; filtered here). Tickets with a false mask (history being backfilled) are
    not routed but still count as earlier tickets for the ones after them. ``thresholds``
    is one pair for all, or one per ticket (per-queue thresholds). ``unreadable[i]``, when
    set, is why ticket i cannot be read by the model: it is routed `manual` with that
    reason, and neither it nor any stored unreadable ticket is ever offered as a match.
    ``lexical[i]``, when given, holds ticket i's BM25 score of its candidates (stored and
    earlier in the batch; a missing key scores 0): candidates are then ranked by
    worker.hybrid.fuse with ``alpha`` over a ``pool`` (each match carries its fused score
    too). The route reads the cosine of the top-ranked match only. Matches always carry
    their cosine. ``offered[j]`` false: ticket j is never offered to its later batch-mates
    (received before the match window). ``planned[i]``, when given, is ticket i's outcome
    from an earlier routing of the same batch; it is kept unless ``redo[i]`` (its
    candidates changed since) or one of the batch-mates it ranked is now routed to
    another route or canonical ticket.
    Returns one Outcome per decided ticket, None for the others.
    """
    per_ticket = (
        [thresholds] * len(keys) if isinstance(thresholds, Thresholds) else list(thresholds)
    )
    reasons = list(unreadable) if unreadable is not None else [None] * len(keys)
    n = len(keys)
    hybrid = lexical is not None and alpha < 1
    # One matrix product for all in-batch pairs: vectors are unit-length, so dot = cosine.
    within = np.asarray(vectors, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T
    outcomes: list[Outcome | None] = []
    changed: set[TicketKey] = set()  # batch-mates routed otherwise than planned
    for i in range(n):
        kept = planned[i] if planned is not None and not (redo and redo[i]) else None
        if kept is not None and kept.bar is not None and not changed & kept.bar.ranked:
            outcomes.append(kept)
            continue
        candidates: dict[TicketKey, Neighbour] = {}
        for nb in stored[i]:
            if nb.key != keys[i] and nb.readable:
                candidates[nb.key] = nb
        for j in range(i):
            if keys[j] == keys[i] or reasons[j] is not None:
                continue
            if offered is not None and not offered[j]:
                continue
            earlier = outcomes[j]
            canonical = earlier.canonical if earlier is not None else keys[j]
            route = earlier.route if earlier is not None else "history"
            candidates[keys[j]] = Neighbour(keys[j], float(within[i, j]), canonical, route)
        if not decide_mask[i]:
            outcomes.append(None)
            continue
        ranked = list(candidates.values())
        if hybrid and lexical is not None:
            ranked, bar = _hybrid_order(ranked, lexical[i], alpha, pool, top_k)
        else:
            ranked.sort(key=lambda nb: -nb.score)
            last = ranked[top_k - 1].score if len(ranked) >= top_k else -np.inf
            bar = Bar(last, np.inf, frozenset(nb.key for nb in ranked[:top_k]))
        matches = tuple(ranked[:top_k])
        score = matches[0].score if matches else None
        route = per_ticket[i].route(score) if reasons[i] is None else "manual"
        canonical = matches[0].canonical if route == "duplicate" else keys[i]
        if planned is not None:
            before = planned[i]
            if before is None or (before.route, before.canonical) != (route, canonical):
                changed.add(keys[i])
        outcomes.append(
            Outcome(
                keys[i],
                route,
                score,
                matches,
                canonical,
                reasons[i],
                "hybrid" if hybrid else "cosine",
                bar,
            )
        )
    return outcomes


def _hybrid_order(
    candidates: list[Neighbour],
    lexical: Mapping[TicketKey, float],
    alpha: float,
    pool: int | None,
    top_k: int,
) -> tuple[list[Neighbour], Bar]:
    """The ``top_k`` best candidates in fused order, each with its fused score (those
    outside the pool left out), and what one more must score to enter the pool."""
    if not candidates:
        return [], Bar(-np.inf, 0.0, frozenset())
    dense = np.array([[nb.score for nb in candidates]], dtype=np.float32)
    bm25 = np.array([[lexical.get(nb.key, 0.0) for nb in candidates]], dtype=np.float32)
    fused = fuse(dense, bm25, alpha, pool)[0]
    order = np.argsort(-fused, kind="stable")[:top_k]
    pooled = np.isfinite(fused)
    if pool is None:  # every candidate is ranked: any other changes the scaling
        bar = Bar(-np.inf, 0.0, frozenset(nb.key for nb in candidates))
    else:
        positive = np.sort(bm25[0][bm25[0] > 0])[::-1]
        bar = Bar(
            float(np.sort(dense[0])[::-1][pool - 1]) if len(candidates) >= pool else -np.inf,
            float(positive[pool - 1]) if len(positive) >= pool else 0.0,
            frozenset(nb.key for nb, p in zip(candidates, pooled, strict=True) if p),
        )
    ranked = [
        replace(candidates[int(j)], fused=float(fused[j])) for j in order if np.isfinite(fused[j])
    ]
    return ranked, bar
