"""Hybrid ranking: dense cosine fused with BM25, the one formula the worker and `evaluate` share.

Per ticket, the candidate pool is the ``pool`` best by cosine plus the ``pool`` best by
BM25 (those sharing at least one token). Within the pool each score is min-max scaled to
[0, 1] and the two are mixed: ``alpha · dense + (1 - alpha) · lexical``. Candidates are
ranked by that mix; the route still reads the cosine of the top-ranked candidate, since
the thresholds are calibrated on cosine, which means the same thing for every query
(a fused score is only comparable within one query).

Score fusion beat reciprocal-rank fusion on both GitBugs sets, and α = 0.7 with a pool
of 20 is where the measured sweep peaks (docs/quality.md, "Retrieval on GitBugs").

Arrays are ``(queries, candidates)`` with ``-inf`` marking a non-candidate (itself, a
later ticket), as in quality/evaluate.py; the worker passes one row per ticket.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]

DEFAULT_ALPHA = 0.7
DEFAULT_POOL = 20


def minmax_rows(scores: Matrix) -> Matrix:
    """Scale each row's candidate scores to [0, 1] (a constant row becomes 0)."""
    finite = np.isfinite(scores)
    lo = np.where(finite, scores, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, scores, -np.inf).max(axis=1, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1)
    scaled = np.where(finite, (scores - lo) / span, -np.inf)
    return scaled.astype(np.float32)


def pool_mask(dense: Matrix, lexical: Matrix, pool: int) -> npt.NDArray[np.bool_]:
    """The ``pool`` best candidates by cosine plus the ``pool`` best with a BM25 score > 0."""
    mask = np.zeros(dense.shape, dtype=bool)
    if dense.shape[1] == 0 or pool <= 0:
        return mask
    k = min(pool, dense.shape[1])
    rows = np.arange(dense.shape[0])[:, None]
    for scores, positive_only in ((dense, False), (lexical, True)):
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        chosen = np.isfinite(scores[rows, top])
        if positive_only:
            chosen &= scores[rows, top] > 0
        mask[rows, top] |= chosen
    return mask & np.isfinite(dense)


def fuse(dense: Matrix, lexical: Matrix, alpha: float, pool: int | None = None) -> Matrix:
    """``alpha`` · dense + (1 - ``alpha``) · BM25, min-max scaled over each row's candidates.

    With ``pool``, only the pooled candidates are ranked (the others get ``-inf``), as in
    the worker, which never sees past its pool; without, every candidate is.
    """
    dense = np.asarray(dense, dtype=np.float32)
    lexical = np.asarray(lexical, dtype=np.float32)
    # A non-candidate (-inf dense) must not stretch the lexical range either.
    mask = pool_mask(dense, lexical, pool) if pool is not None else np.isfinite(dense)
    dense = np.where(mask, dense, -np.inf).astype(np.float32)
    lexical = np.where(mask, lexical, -np.inf).astype(np.float32)
    candidate = np.isfinite(dense)
    # Zeros where not a candidate, so that 0 · -inf never makes a NaN (alpha 0 or 1).
    scaled_dense = np.where(candidate, minmax_rows(dense), 0.0)
    scaled_lexical = np.where(candidate, minmax_rows(lexical), 0.0)
    fused = alpha * scaled_dense + (1 - alpha) * scaled_lexical
    return np.where(candidate, fused, -np.inf).astype(np.float32)
