"""The lexical baseline: BM25 (bm25s, Lucene variant, k1 = 1.5, b = 0.75) over the tokens of
the worker's own lexical index (worker/lexical.tokenize: ``\\w+`` runs of the NFKC form,
lowercased, CJK one character per token by default). tests/test_lexical.py checks the
worker's incremental index against this one.

Stopword removal is optional (``stopwords=True``, bm25s' English list) and off by default,
so that the baseline stays the plain one the issue quotes; measured, it moved Recall@10 by
0 to +0.03 on GitBugs, within noise (docs/quality.md). Stemming is not offered: bm25s needs
PyStemmer for it, a dependency not worth adding for a baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import bm25s
import numpy as np
import numpy.typing as npt
from bm25s.stopwords import STOPWORDS_EN

from worker import lexical

_STOPWORDS = frozenset(STOPWORDS_EN)

Scores = npt.NDArray[np.float32]


def tokenize(
    text: str,
    *,
    stopwords: bool = False,
    cjk: lexical.CjkMode = lexical.DEFAULT_CJK,
    nfkc: bool = True,
) -> list[str]:
    tokens = lexical.tokenize(text, cjk, nfkc=nfkc)
    if stopwords:
        tokens = [t for t in tokens if t not in _STOPWORDS]
    return tokens


class BM25Index:
    """A BM25 index over ``texts``; :meth:`scores` gives a query's score for every text."""

    def __init__(
        self,
        texts: Sequence[str],
        *,
        stopwords: bool = False,
        cjk: lexical.CjkMode = lexical.DEFAULT_CJK,
        nfkc: bool = True,
    ) -> None:
        self.stopwords = stopwords
        self.cjk = cjk
        self.nfkc = nfkc
        self.size = len(texts)
        # An empty document still needs a token so that bm25s keeps its position.
        corpus = [self.tokenize(t) or [""] for t in texts]
        self._model = bm25s.BM25()
        self._model.index(corpus, show_progress=False)
        self._vocab: dict[str, int] = dict(self._model.vocab_dict)

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text, stopwords=self.stopwords, cjk=self.cjk, nfkc=self.nfkc)

    def scores(self, query: str) -> Scores:
        """BM25 of every indexed text for ``query`` (terms not in the index are ignored)."""
        tokens = [t for t in self.tokenize(query) if t in self._vocab]
        if not tokens:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._model.get_scores(tokens), dtype=np.float32)

    def score_matrix(self, queries: Sequence[str]) -> Scores:
        """``(len(queries), size)`` scores, one row per query."""
        out = np.zeros((len(queries), self.size), dtype=np.float32)
        for row, query in enumerate(queries):
            out[row] = self.scores(query)
        return out
