"""Threshold calibration: from labelled (score, label) pairs to `duplicate` / `suggest` thresholds.

The maths are pure functions of two arrays, ``scores`` (cosine similarity of a pair) and
``labels`` (1 = the two tickets are duplicates, 0 = they are not):

- :func:`recommend`: the duplicate threshold is the *lowest* threshold whose precision over
  all pairs scoring at or above it reaches the target (so it keeps as much recall as that
  precision allows), counted only where at least ``min_support`` pairs lie above it, so that
  one lucky pair at the top cannot set it. When no supported threshold reaches the target,
  the threshold of the highest supported precision is returned and flagged. The suggest
  threshold is the *highest* threshold whose recall reaches the recall target (so `suggest`
  shows agents as few non-duplicates as possible), never above the duplicate threshold.
- :func:`roc_auc`: the rank (Mann-Whitney) form, ties counted one half.
- :func:`curves`, :func:`plot`: ROC, precision-recall and the score histograms.
- :func:`recommend_per_queue`: one recommendation per queue, the default where a queue has
  too few labelled pairs.

Recommended thresholds are always observed scores: a pair scoring exactly the threshold
counts as above it, as in :meth:`worker.routing.Thresholds.route` (``score >= threshold``).

The loaders at the end read the two kinds of data: a labelled pairs file (embedded here
with the configured model) and the agents' confirm / veto feedback in the product's database.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine

from tickets.feedback import Verdicts, load_verdicts, tally
from worker.embedding import Embedder
from worker.routing import Thresholds
from worker.thresholds import ThresholdTable

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# At least this many pairs must score at or above a duplicate threshold before its precision
# counts: with 3 pairs above, one mistake moves precision by a third.
DEFAULT_MIN_SUPPORT = 10
# A queue needs this many labelled pairs, and this many of each class, for its own thresholds;
# below that its estimate is noise and the default is the better guess.
DEFAULT_MIN_QUEUE_PAIRS = 30
DEFAULT_MIN_PER_CLASS = 5
# Precision and recall are ratios of small integers; compare with a little slack so that
# 19/20 meets a 0.95 target whatever the rounding of either side.
_EPS = 1e-12


# --- the maths -----------------------------------------------------------------------------


def _as_arrays(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, IntArray]:
    s = np.asarray(scores, dtype=np.float64)
    y_raw = np.asarray(labels)
    if s.ndim != 1 or y_raw.ndim != 1:
        raise ValueError("scores and labels must be one-dimensional")
    if len(s) != len(y_raw):
        raise ValueError(f"{len(s)} scores but {len(y_raw)} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite numbers")
    if not np.all(np.isin(y_raw, (0, 1))):
        raise ValueError("labels must be 0 (not a duplicate) or 1 (duplicate)")
    return s, y_raw.astype(np.int64)


def _ranked(s: FloatArray, y: IntArray) -> tuple[FloatArray, IntArray, IntArray]:
    """Every distinct score as a threshold, highest first, with the true and false positives
    at or above it (cumulative counts read at the last pair of each group of tied scores)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    return s_sorted[last], tp[last].astype(np.int64), fp[last].astype(np.int64)


def _wilson_low(successes: int, n: int, z: float = 1.96) -> float:
    """Lower end of the 95 % Wilson interval: how low the precision may really be."""
    if n == 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n))


@dataclass(frozen=True)
class Metrics:
    """What routing at ``score >= threshold`` does to a labelled set."""

    threshold: float
    above: int  # pairs at or above the threshold
    true_positives: int
    false_positives: int
    positives: int  # all duplicate pairs in the set
    precision: float | None  # None when no pair is above
    precision_low: float | None  # 95 % Wilson lower bound of the precision
    recall: float
    f1: float | None


def metrics_at(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> Metrics:
    s, y = _as_arrays(scores, labels)
    above = s >= threshold
    tp = int(np.sum(y[above]))
    n_above = int(np.sum(above))
    positives = int(np.sum(y))
    precision = tp / n_above if n_above else None
    recall = tp / positives if positives else 0.0
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and precision + recall > 0
        else None
    )
    return Metrics(
        threshold=float(threshold),
        above=n_above,
        true_positives=tp,
        false_positives=n_above - tp,
        positives=positives,
        precision=precision,
        precision_low=_wilson_low(tp, n_above) if n_above else None,
        recall=recall,
        f1=f1,
    )


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """ROC AUC as the probability that a random duplicate outscores a random non-duplicate,
    ties counted one half (Mann-Whitney U from average ranks)."""
    s, y = _as_arrays(scores, labels)
    n_pos = int(np.sum(y))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both duplicate and non-duplicate pairs")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    starts_group = np.r_[True, s_sorted[1:] != s_sorted[:-1]]
    group = np.cumsum(starts_group) - 1
    starts = np.nonzero(starts_group)[0]
    ends = np.r_[starts[1:], len(s_sorted)]  # exclusive
    # 1-based ranks start+1 .. end share their mean
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = mean_rank[group]
    u = float(np.sum(ranks[y == 1])) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


@dataclass(frozen=True)
class Curves:
    """Point i of each curve is routing at ``score >= thresholds[i]`` (highest first)."""

    thresholds: FloatArray
    fpr: FloatArray
    tpr: FloatArray  # = recall
    precision: FloatArray
    auc: float

    @property
    def recall(self) -> FloatArray:
        return self.tpr


def curves(scores: npt.ArrayLike, labels: npt.ArrayLike) -> Curves:
    s, y = _as_arrays(scores, labels)
    n_pos = int(np.sum(y))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("curves need both duplicate and non-duplicate pairs")
    t, tp, fp = _ranked(s, y)
    return Curves(
        thresholds=t,
        fpr=fp / n_neg,
        tpr=tp / n_pos,
        precision=tp / (tp + fp),
        auc=roc_auc(s, y),
    )


@dataclass(frozen=True)
class Recommendation:
    thresholds: Thresholds
    duplicate: Metrics  # at thresholds.duplicate
    suggest: Metrics  # at thresholds.suggest
    auc: float
    positives: int
    negatives: int
    target_precision: float
    target_recall: float
    min_support: int
    # False: no threshold with min_support pairs above reaches target_precision; the
    # duplicate threshold is then the one of the highest precision found.
    precision_reached: bool
    # True: the highest threshold with enough recall lay above the duplicate threshold, so
    # suggest = duplicate (the duplicate route alone meets the recall target).
    suggest_capped: bool
    notes: tuple[str, ...] = ()

    @property
    def pairs(self) -> int:
        return self.positives + self.negatives

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["thresholds"] = {
            "duplicate": self.thresholds.duplicate,
            "suggest": self.thresholds.suggest,
        }
        out["notes"] = list(self.notes)
        out["pairs"] = self.pairs
        return out


def recommend(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    target_precision: float = 0.95,
    target_recall: float = 0.90,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> Recommendation:
    """Recommend both thresholds for the targets (see the module docstring for the rules).

    Raises ValueError when the set cannot support a recommendation: one class missing, or
    fewer pairs than ``min_support``.
    """
    if not 0.0 < target_precision <= 1.0 or not 0.0 < target_recall <= 1.0:
        raise ValueError("target precision and recall must lie in (0, 1]")
    if min_support < 1:
        raise ValueError("min_support must be at least 1")
    s, y = _as_arrays(scores, labels)
    n_pos = int(np.sum(y))
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"calibration needs both duplicate (label 1) and non-duplicate (label 0) pairs; "
            f"got {n_pos} and {n_neg}"
        )
    if len(y) < min_support:
        raise ValueError(
            f"calibration needs at least {min_support} labelled pairs (the minimum support "
            f"above a duplicate threshold); got {len(y)}"
        )
    notes: list[str] = []
    t, tp, fp = _ranked(s, y)
    above = tp + fp
    precision = tp / above
    supported = above >= min_support
    good = supported & (precision >= target_precision - _EPS)
    if good.any():
        # thresholds run from high to low: the last good one is the lowest
        i = int(np.nonzero(good)[0][-1])
        reached = True
    else:
        # never empty: the lowest threshold has every pair above it and len(y) >= min_support
        candidates = np.nonzero(supported)[0]
        best = float(np.max(precision[candidates]))
        i = int(candidates[precision[candidates] >= best - _EPS][-1])
        reached = False
        notes.append(
            f"precision target {target_precision:.2f} is not reached by any threshold with at "
            f"least {min_support} pairs above it; the duplicate threshold is the one of the "
            f"highest precision found ({best:.3f}). Route fewer tickets `duplicate` (raise it "
            f"by hand), or accept the lower precision."
        )
    duplicate = float(t[i])

    # recall(t) only falls as t rises: the highest threshold with enough positives above is
    # the score of the k-th best positive. _EPS keeps 0.9 * 30 from becoming 28.
    need = max(1, math.ceil(target_recall * n_pos - 1e-9))
    j = int(np.nonzero(tp >= need)[0][0])
    suggest = float(t[j])
    capped = suggest > duplicate
    if capped:
        suggest = duplicate
        notes.append(
            f"the duplicate threshold alone reaches recall {target_recall:.2f}: suggest = "
            f"duplicate, so nothing is routed `suggest`"
        )
    dup_metrics = metrics_at(s, y, duplicate)
    if (
        reached
        and dup_metrics.precision_low is not None
        and dup_metrics.precision_low < target_precision
    ):
        notes.append(
            f"precision {dup_metrics.precision:.3f} at the duplicate threshold rests on "
            f"{dup_metrics.above} pairs: its 95 % lower bound is {dup_metrics.precision_low:.3f}; "
            f"more labelled pairs would narrow it"
        )
    return Recommendation(
        thresholds=Thresholds(duplicate=duplicate, suggest=suggest),
        duplicate=dup_metrics,
        suggest=metrics_at(s, y, suggest),
        auc=roc_auc(s, y),
        positives=n_pos,
        negatives=n_neg,
        target_precision=target_precision,
        target_recall=target_recall,
        min_support=min_support,
        precision_reached=reached,
        suggest_capped=capped,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class QueueRecommendations:
    default: Recommendation  # on every pair, whatever its queue
    queues: Mapping[str, Recommendation] = field(default_factory=lambda: MappingProxyType({}))
    # queue -> why it uses the default thresholds
    fell_back: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def table(self, model: str | None) -> ThresholdTable:
        return ThresholdTable(
            default=self.default.thresholds,
            queues=MappingProxyType({q: r.thresholds for q, r in self.queues.items()}),
            model=model,
        )


def recommend_per_queue(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    queues: Sequence[str | None],
    *,
    target_precision: float = 0.95,
    target_recall: float = 0.90,
    min_support: int = DEFAULT_MIN_SUPPORT,
    min_pairs: int = DEFAULT_MIN_QUEUE_PAIRS,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
) -> QueueRecommendations:
    """The default on all pairs, plus one recommendation per queue that has enough data.

    Pairs without a queue (None or "") count for the default only. A queue below
    ``min_pairs`` pairs or ``min_per_class`` of either class falls back to the default and
    is listed in ``fell_back`` with the reason. A queue whose precision target is out of
    reach keeps its own (flagged) thresholds: its highest-precision threshold protects it
    better than a default fitted to other queues.
    """
    s, y = _as_arrays(scores, labels)
    if len(queues) != len(s):
        raise ValueError(f"{len(s)} scores but {len(queues)} queue names")

    def fit(scores: FloatArray, labels: IntArray) -> Recommendation:
        return recommend(
            scores,
            labels,
            target_precision=target_precision,
            target_recall=target_recall,
            min_support=min_support,
        )

    default = fit(s, y)
    names = np.array([q or "" for q in queues], dtype=object)
    own: dict[str, Recommendation] = {}
    fell_back: dict[str, str] = {}
    for queue in sorted(set(names) - {""}):
        mask = names == queue
        n, n_pos = int(np.sum(mask)), int(np.sum(y[mask]))
        n_neg = n - n_pos
        if n < min_pairs:
            fell_back[queue] = f"{n} labelled pairs, fewer than {min_pairs}"
        elif min(n_pos, n_neg) < min_per_class:
            fell_back[queue] = (
                f"{n_pos} duplicate and {n_neg} non-duplicate pairs, "
                f"fewer than {min_per_class} of one kind"
            )
        else:
            try:
                own[queue] = fit(s[mask], y[mask])
            except ValueError as exc:
                fell_back[queue] = str(exc)
    return QueueRecommendations(
        default=default, queues=MappingProxyType(own), fell_back=MappingProxyType(fell_back)
    )


# --- plots ---------------------------------------------------------------------------------

PLOT_FILES = ("roc.png", "pr.png", "histogram.png")


def _marker(name: str, colour: str) -> dict[str, Any]:
    # The duplicate point is a ring drawn around the suggest dot: when both thresholds are
    # equal (suggest capped) both stay visible.
    if name == "duplicate":
        return {
            "marker": "o",
            "markersize": 12,
            "markerfacecolor": "none",
            "markeredgewidth": 2,
            "color": colour,
            "linestyle": "none",
        }
    return {"marker": "o", "markersize": 6, "color": colour, "linestyle": "none"}


def plot(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    rec: Recommendation,
    out_dir: Path,
    *,
    current: Thresholds | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write roc.png, pr.png and histogram.png into ``out_dir``; return their paths by name.

    Figures are built with matplotlib's object API on the Agg canvas, never through pyplot:
    no GUI backend is ever selected (a server has no display), nothing global is switched,
    and a figure is freed with its last reference instead of living on in pyplot's registry.
    """
    # Imported here: matplotlib is the optional `quality` extra, and only plotting needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s, y = _as_arrays(scores, labels)
    c = curves(s, y)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f" — {title}" if title else ""
    dup, sug = rec.thresholds.duplicate, rec.thresholds.suggest
    paths: dict[str, Path] = {}

    def save(fig: Figure, name: str) -> None:
        FigureCanvasAgg(fig)
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        paths[name.removesuffix(".png")] = path

    # ROC: starts at (0, 0), nothing routed
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot(np.r_[0.0, c.fpr], np.r_[0.0, c.tpr], color="C0", label=f"ROC (AUC {c.auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
    for m, name, colour in ((rec.duplicate, "duplicate", "C3"), (rec.suggest, "suggest", "C1")):
        fpr = m.false_positives / rec.negatives
        ax.plot([fpr], [m.recall], **_marker(name, colour), label=f"{name} ≥ {m.threshold:.3f}")
    ax.set_xlabel("false positive rate (non-duplicates routed)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(f"ROC{suffix}")
    ax.legend(loc="lower right")
    save(fig, "roc.png")

    # Precision-recall
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    # steps-pre: between two recall levels the precision is the one of the lower threshold
    ax.plot(
        np.r_[0.0, c.recall],
        np.r_[c.precision[0], c.precision],
        color="C0",
        drawstyle="steps-pre",
        label="precision / recall",
    )
    ax.axhline(
        rec.target_precision, color="C3", linestyle=":", linewidth=1, label="target precision"
    )
    ax.axvline(rec.target_recall, color="C1", linestyle=":", linewidth=1, label="target recall")
    for m, name, colour in ((rec.duplicate, "duplicate", "C3"), (rec.suggest, "suggest", "C1")):
        if m.precision is not None:
            ax.plot(
                [m.recall],
                [m.precision],
                **_marker(name, colour),
                label=f"{name} ≥ {m.threshold:.3f}",
            )
    base = rec.positives / rec.pairs
    ax.axhline(
        base, color="grey", linestyle=":", linewidth=1, label=f"share of duplicates {base:.2f}"
    )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.set_title(f"Precision-recall{suffix}")
    ax.legend(loc="lower left")
    save(fig, "pr.png")

    # Score histograms: where the two classes overlap is where no threshold is right
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    lo, hi = float(np.min(s)), float(np.max(s))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-3, 41).tolist()
    ax.hist(s[y == 0], bins=bins, alpha=0.55, color="C0", label=f"not duplicates ({rec.negatives})")
    ax.hist(s[y == 1], bins=bins, alpha=0.55, color="C2", label=f"duplicates ({rec.positives})")
    ax.axvline(dup, color="C3", linewidth=2, label=f"duplicate ≥ {dup:.3f} (recommended)")
    ax.axvline(sug, color="C1", linewidth=2, label=f"suggest ≥ {sug:.3f} (recommended)")
    if current is not None:
        ax.axvline(
            current.duplicate,
            color="C3",
            linestyle="--",
            linewidth=1.5,
            label=f"duplicate ≥ {current.duplicate:.3f} (current)",
        )
        ax.axvline(
            current.suggest,
            color="C1",
            linestyle="--",
            linewidth=1.5,
            label=f"suggest ≥ {current.suggest:.3f} (current)",
        )
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("pairs")
    ax.set_title(f"Scores of duplicates and non-duplicates{suffix}")
    ax.legend(loc="upper left", fontsize="small")
    save(fig, "histogram.png")
    return paths


# --- data ----------------------------------------------------------------------------------

# Accepted header names (lower case) of the two texts, first match wins: our own format,
# then the BQ / LCQMC-style names of public pair sets.
_TEXT_COLUMNS = (("text_a", "text_b"), ("sentence1", "sentence2"), ("s1", "s2"))


@dataclass(frozen=True)
class PairSet:
    text_a: list[str]
    text_b: list[str]
    labels: IntArray
    queues: list[str | None] | None  # None: the file has no queue column


def _label(raw: str, where: str) -> int:
    value = raw.strip()
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number not in (0.0, 1.0):
        raise ValueError(f"{where}: label must be 0 or 1, got {raw!r}")
    return int(number)


def read_pairs(path: Path) -> PairSet:
    """Read a labelled pairs CSV: header ``text_a,text_b,label[,queue]`` (or ``sentence1,
    sentence2,label`` as in BQ). A byte-order mark is skipped; a header line with tabs and
    no commas is read as TSV. Errors name the file and line."""
    path = Path(path)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        first = fh.readline()
        delimiter = "\t" if "\t" in first and "," not in first else ","
        fh.seek(0)
        # utf-8-sig drops the BOM; the lstrip below is for a BOM doubled by an editor.
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        names = [h.strip().lstrip("\ufeff").lower() for h in header]
        pair_cols = next(((a, b) for a, b in _TEXT_COLUMNS if a in names and b in names), None)
        if pair_cols is None or "label" not in names:
            raise ValueError(
                f"{path}: header must name text_a,text_b,label (or sentence1,sentence2,label); "
                f"got {','.join(header)}"
            )
        ia, ib, il = names.index(pair_cols[0]), names.index(pair_cols[1]), names.index("label")
        iq = names.index("queue") if "queue" in names else None
        text_a: list[str] = []
        text_b: list[str] = []
        labels: list[int] = []
        queues: list[str | None] = []
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) < len(names):
                raise ValueError(f"{where}: expected {len(names)} columns, got {len(row)}")
            a, b = row[ia].strip(), row[ib].strip()
            if not a or not b:
                raise ValueError(f"{where}: empty text")
            text_a.append(a)
            text_b.append(b)
            labels.append(_label(row[il], where))
            if iq is not None:
                queues.append(row[iq].strip() or None)
    if not labels:
        raise ValueError(f"{path}: no pairs")
    return PairSet(
        text_a=text_a,
        text_b=text_b,
        labels=np.asarray(labels, dtype=np.int64),
        queues=queues if iq is not None else None,
    )


def score_pairs(
    embedder: Embedder,
    text_a: Sequence[str],
    text_b: Sequence[str],
    *,
    batch_size: int = 64,
    progress: Callable[[int], object] | None = None,
) -> FloatArray:
    """Cosine similarity of each pair: embed every distinct text once, in batches, and take
    dot products (the embedder returns unit vectors). ``progress(n)`` is told after each
    batch how many texts it held."""
    if len(text_a) != len(text_b):
        raise ValueError(f"{len(text_a)} first texts but {len(text_b)} second texts")
    # Pair sets repeat texts (BQ: one question in many pairs); each is embedded once.
    unique = list(dict.fromkeys([*text_a, *text_b]))
    index = {text: i for i, text in enumerate(unique)}
    chunks = []
    for start in range(0, len(unique), batch_size):
        batch = unique[start : start + batch_size]
        chunks.append(np.asarray(embedder.embed(batch), dtype=np.float32))
        if progress is not None:
            progress(len(batch))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    ia = np.fromiter((index[t] for t in text_a), dtype=np.intp, count=len(text_a))
    ib = np.fromiter((index[t] for t in text_b), dtype=np.intp, count=len(text_b))
    dots = np.einsum("ij,ij->i", vectors[ia], vectors[ib])
    return np.asarray(dots, dtype=np.float64)


@dataclass(frozen=True)
class FeedbackSet:
    """Agent verdicts as labelled scores: one pair per judged decision."""

    scores: FloatArray
    labels: IntArray
    queues: list[str | None]
    verdicts: int  # feedback rows read
    conflicting: int  # decisions with as many confirms as vetoes: left out
    unscored: int  # decisions without a score: left out
    models: tuple[str, ...]  # embedding models of the decisions used

    @property
    def lowest_score(self) -> float | None:
        return float(np.min(self.scores)) if len(self.scores) else None


def _as_set(verdicts: Verdicts) -> FeedbackSet:
    judged = verdicts.judged
    return FeedbackSet(
        scores=np.asarray([j.score for j in judged], dtype=np.float64),
        labels=np.asarray([int(j.confirmed) for j in judged], dtype=np.int64),
        queues=[j.queue for j in judged],
        verdicts=verdicts.verdicts,
        conflicting=verdicts.conflicting,
        unscored=verdicts.unscored,
        models=tuple(sorted({j.model for j in judged if j.model})),
    )


def feedback_from_rows(
    rows: Iterable[tuple[str, str, str, float | None, float | None, str | None, str | None]],
) -> FeedbackSet:
    """Rows of (source, ticket_id, verdict, feedback score, decision score, queue, model),
    labelled as :func:`tickets.feedback.tally` says (majority verdict, ties left out)."""
    return _as_set(tally(rows))


def load_feedback(engine: Engine) -> FeedbackSet:
    """Agent feedback joined to its decision: :func:`tickets.feedback.load_verdicts`, the same
    labels the dashboard's review precision counts."""
    return _as_set(load_verdicts(engine))


def safe_name(queue: str) -> str:
    """A folder name for a queue's plots."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", queue).strip("._") or "queue"
