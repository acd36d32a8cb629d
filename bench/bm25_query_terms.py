"""BM25 scoring cost vs quality when a query keeps only its highest-weighted terms.

    python bench/bm25_query_terms.py --corpus $DATA/gitbugs/hadoop/hadoop_bugs.csv \
        --links $DATA/gitbugs/hadoop/hadoop_bugs-combined.csv

($DATA: the public data sets, not shipped; docs/quality.md, "Data", gives their sources.)

All-others protocol, the worker's own BM25 index (worker/lexical.py) and fusion
(worker/hybrid.py, the configured alpha and pool) on the product's default vectors; for
each limit T the query keeps its T terms of highest tf · idf (Lucene MoreLikeThis style).
Prints Recall@10 / MRR of the fused ranking and of BM25 alone, and the scoring time per query.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.settings import load_settings  # noqa: E402
from quality.datasets import load_retrieval_set  # noqa: E402
from quality.evaluate import (  # noqa: E402
    EmbeddingCache,
    Variant,
    dense_scores,
    embed_reports,
    first_relevant_ranks,
    protocols_for,
    ranking_metrics,
)
from worker.embedding import make_embedder  # noqa: E402
from worker.hybrid import fuse  # noqa: E402
from worker.lexical import build_index, lexical_text, tokenize  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--links", type=Path, required=True)
    parser.add_argument("--terms", default="0,64,32,16", help="limits to try (0 = every term)")
    args = parser.parse_args()

    settings = load_settings()
    data = load_retrieval_set(args.corpus, args.links)
    items = [(r.summary, r.description) for r in data.reports]
    cache = EmbeddingCache(make_embedder(settings), progress=False)
    vectors = embed_reports(
        cache, Variant("product", subject_vector_weight=settings.subject_weight), items
    )
    texts = [lexical_text(s, d) for s, d in items]
    index = build_index(texts)
    n = len(index)

    def weight(term: str, tf: int) -> float:
        posting = index._postings.get(term)
        if posting is None:
            return -1.0
        df = len(posting[0])
        return tf * float(np.log1p((n - df + 0.5) / (df + 0.5)))

    def limited(query: str, limit: int) -> str:
        if limit <= 0:
            return query
        counts = Counter(tokenize(query))
        keep = set(sorted(counts, key=lambda t: weight(t, counts[t]), reverse=True)[:limit])
        return " ".join(t for t in tokenize(query) if t in keep)

    protocol = protocols_for(data, "all-others")[0]
    dense = dense_scores(vectors, protocol)
    print(f"{data.name}: {n} reports, {len(protocol.queries)} queries")
    for limit in (int(t) for t in args.terms.split(",")):
        lexical = np.full(dense.shape, -np.inf, dtype=np.float32)
        start = time.perf_counter()
        for row, q in enumerate(protocol.queries):
            scores = index.scores(limited(texts[q], limit))
            lexical[row] = np.where(protocol.candidate[row], scores, -np.inf)
        per_query = (time.perf_counter() - start) / len(protocol.queries) * 1000
        fused = fuse(dense, lexical, settings.hybrid_alpha, settings.hybrid_pool)
        h = ranking_metrics(first_relevant_ranks(fused, protocol.relevant))
        b = ranking_metrics(first_relevant_ranks(lexical, protocol.relevant))
        print(
            f"terms {'all' if limit <= 0 else limit:>3}: hybrid R@10 {h['recall@10']:.3f} "
            f"MRR {h['mrr']:.3f} | BM25 R@10 {b['recall@10']:.3f} | {per_query:.2f} ms/query"
        )


if __name__ == "__main__":
    main()
