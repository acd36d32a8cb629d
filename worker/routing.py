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
from dataclasses import dataclass
from typing import Literal

import numpy as np

from worker.embedding import Vectors
from worker.hybrid import fuse
from worker.store import Neighbour
from worker.tickets import TicketKey

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

    def route_shown(self, scores: Sequence[float]) -> tuple[Route, float | None]:
        """Route from the cosines of the matches a ticket is shown, best-ranked first.

        ``duplicate`` when the top-ranked match reaches the duplicate threshold: that is
        the ticket it would be merged into. Otherwise ``suggest`` when any shown match
        reaches the suggest threshold, since the agent sees it; else ``manual``. The score
        is the cosine that decided. With dense ranking the top-ranked match is the most
        similar, so this is ``route(top cosine)``; with hybrid ranking a lexical match may
        rank above a closer one, and the closer one still earns a suggestion.
        """
        if not scores:
            return "manual", None  # no history yet
        if scores[0] >= self.duplicate:
            return "duplicate", scores[0]
        best = max(scores)
        return ("suggest" if best >= self.suggest else "manual"), best


@dataclass(frozen=True)
class Outcome:
    key: TicketKey
    route: Route
    score: float | None
    matches: tuple[Neighbour, ...]  # best first, at most top_k
    canonical: TicketKey
    reason: str | None = None  # set when the route is not the score's (coverage guard)

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
    worker.hybrid.fuse with ``alpha`` over a ``pool``, and the route reads the cosine of the
    top-ranked one. Matches always carry their cosine.
    Returns one Outcome per decided ticket, None for the others.
    """
    per_ticket = (
        [thresholds] * len(keys) if isinstance(thresholds, Thresholds) else list(thresholds)
    )
    reasons = list(unreadable) if unreadable is not None else [None] * len(keys)
    n = len(keys)
    # One matrix product for all in-batch pairs: vectors are unit-length, so dot = cosine.
    within = np.asarray(vectors, dtype=np.float32) @ np.asarray(vectors, dtype=np.float32).T
    outcomes: list[Outcome | None] = []
    for i in range(n):
        candidates: dict[TicketKey, Neighbour] = {}
        for nb in stored[i]:
            if nb.key != keys[i] and nb.readable:
                candidates[nb.key] = nb
        for j in range(i):
            if keys[j] == keys[i] or reasons[j] is not None:
                continue
            earlier = outcomes[j]
            canonical = earlier.canonical if earlier is not None else keys[j]
            route = earlier.route if earlier is not None else "history"
            candidates[keys[j]] = Neighbour(keys[j], float(within[i, j]), canonical, route)
        if not decide_mask[i]:
            outcomes.append(None)
            continue
        ranked = list(candidates.values())
        if lexical is not None and alpha < 1 and ranked:
            ranked = _hybrid_order(ranked, lexical[i], alpha, pool)
        else:
            ranked.sort(key=lambda nb: -nb.score)
        matches = tuple(ranked[:top_k])
        route, score = per_ticket[i].route_shown([m.score for m in matches])
        if reasons[i] is not None:
            route = "manual"
        canonical = matches[0].canonical if route == "duplicate" and matches else keys[i]
        outcomes.append(Outcome(keys[i], route, score, matches, canonical, reasons[i]))
    return outcomes


def _hybrid_order(
    candidates: list[Neighbour], lexical: Mapping[TicketKey, float], alpha: float, pool: int | None
) -> list[Neighbour]:
    """Candidates in fused order (best first), those outside the pool left out."""
    dense = np.array([[nb.score for nb in candidates]], dtype=np.float32)
    bm25 = np.array([[lexical.get(nb.key, 0.0) for nb in candidates]], dtype=np.float32)
    fused = fuse(dense, bm25, alpha, pool)[0]
    order = np.argsort(-fused, kind="stable")
    return [candidates[int(j)] for j in order if np.isfinite(fused[j])]
