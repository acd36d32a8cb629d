"""Calibrate on earlier tickets, measure on later ones: is `duplicate` precise out of sample?

    python bench/heldout_calibration.py \
        --corpus $DATA/gitbugs/hadoop/hadoop_bugs.csv \
        --links $DATA/gitbugs/hadoop/hadoop_bugs-combined.csv

($DATA: the public data sets, not shipped; docs/quality.md, "Data", gives their sources.)

Pairs as the product meets them: every report is compared with each earlier report among its
top-5 nearest (by the product's own vectors: default text preparation + subject vector);
a pair is positive when the two are linked as duplicates. The pairs of the first half of the
reports (by Created) calibrate the thresholds (`quality.calibrate.recommend`, target
precision 0.95); the pairs of the second half measure precision and recall at them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.settings import load_settings  # noqa: E402
from quality.calibrate import metrics_at, recommend  # noqa: E402
from quality.datasets import load_retrieval_set  # noqa: E402
from tickets.model import Ticket  # noqa: E402
from worker.embedding import make_embedder  # noqa: E402
from worker.text import embed_tickets, embedding_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--links", type=Path, required=True)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--target-precision", type=float, default=0.95)
    args = ap.parse_args()

    settings = load_settings()
    data = load_retrieval_set(args.corpus, args.links)
    reports = data.reports
    tickets = [
        Ticket(
            source="eval",
            ticket_id=r.report_id,
            subject=r.summary or None,
            body=r.description or r.summary or ".",
        )
        for r in reports
    ]
    embedder = make_embedder(settings)
    vectors = np.concatenate(
        [
            embed_tickets(
                embedder.embed,
                [embedding_text(t) for t in tickets[i : i + 64]],
                [t.subject for t in tickets[i : i + 64]],
                settings.subject_weight,
            )
            for i in range(0, len(tickets), 64)
        ]
    )
    linked = data.links
    ids = [r.report_id for r in reports]
    scores, labels, half = [], [], []
    for i in range(1, len(reports)):
        sims = vectors[:i] @ vectors[i]
        for j in np.argsort(-sims)[: args.k]:
            pair = tuple(sorted((ids[i], ids[int(j)])))
            scores.append(float(sims[j]))
            labels.append(int(pair in linked))
            half.append(i >= len(reports) // 2)
    s, y, late = np.asarray(scores), np.asarray(labels), np.asarray(half)
    rec = recommend(s[~late], y[~late], target_precision=args.target_precision)
    held = metrics_at(s[late], y[late], rec.thresholds.duplicate)
    now = metrics_at(s[late], y[late], settings.duplicate_threshold)
    print(
        f"{data.name}: {len(reports)} reports, {len(s)} pairs ({int(y.sum())} linked); "
        f"calibration half {int((~late).sum())} pairs, held-out half {int(late.sum())}"
    )
    print(
        f"calibrated duplicate threshold {rec.thresholds.duplicate:.3f} "
        f"(precision target reached on the calibration half: {rec.precision_reached}; "
        f"there: precision {_f(rec.duplicate.precision)}, recall {rec.duplicate.recall:.3f})"
    )
    print(
        f"held-out at {rec.thresholds.duplicate:.3f}: precision {_f(held.precision)} "
        f"(95% lower bound {_f(held.precision_low)}), recall {held.recall:.3f}, routed {held.above}"
    )
    print(
        f"held-out at the default {settings.duplicate_threshold}: precision {_f(now.precision)}, "
        f"recall {now.recall:.3f}, routed {now.above}"
    )


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
