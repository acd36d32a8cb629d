"""The lexical half of hybrid ranking: an incremental BM25 index over the stored tickets.

Why it exists: measured on GitBugs (docs/quality.md), dense and lexical rankings miss
different duplicates; fusing them lifts Recall@10 over either alone. Bug reports share
exact identifiers (class names, error codes, file names) that a 256-token English
sentence model blurs, and BM25 catches those.

The index lives in each worker process's memory and is derived data, like the vectors:
SQL's ``triage_tickets`` holds every ticket, and :meth:`LexicalIndex.refresh` reads the
rows added since the last call (by id), so every worker process sees the tickets the
others stored. It is refreshed before a batch's decision section, up to the snapshot the
batch is ranked on (worker/pipeline.py); the tickets committed after that snapshot are
scored where the batch is routed (its plan, or its section when the plan no longer holds) with
:meth:`LexicalIndex.score_texts`.

Scoring is BM25 as Lucene (and bm25s, the library ``triage evaluate`` uses for its
baseline) computes it: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), term weight
tf / (tf + k1 · (1 - b + b · dl / avgdl)), summed over the query's tokens (a repeated
query token counts each time). tests/test_lexical.py checks it against bm25s.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tickets.db import ScopeField, TicketRow, pages_by_id, scope_filter
from tickets.model import BodyFormat, TicketKey
from worker.text import prepare_text

logger = logging.getLogger(__name__)

Scores = npt.NDArray[np.float32]

_CJK = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs (+ extension A, compatibility)
    "\u3040-\u30ff\uac00-\ud7af"  # kana, hangul syllables
)
# ``\w+`` runs, lowercased, with runs of CJK characters kept apart: ``\w+`` alone would
# make a whole Chinese sentence one token that only an exact copy matches.
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")

CjkMode = Literal["unigram", "bigram", "both", "jieba"]
CJK_MODES: tuple[CjkMode, ...] = ("unigram", "bigram", "both", "jieba")
#: How a run of CJK characters becomes tokens: one token per character. Measured by
#: `triage evaluate pairs --compare-cjk` on the public Chinese pair sets (docs/quality.md, BM25
#: ROC AUC, unigram / bigram / both / jieba): unigrams are best on BQ (0.732 / 0.705 /
#: 0.728 / 0.693) and STS-B zh (0.878 / 0.826 / – / 0.843), jieba's word segmentation is
#: 0.007 ahead on LCQMC (0.861 against 0.854) only; overlapping bigrams, as Lucene's CJK
#: analyzer makes them, are worst on short support questions, whose twins are paraphrases
#: that share characters more than character pairs.
DEFAULT_CJK: CjkMode = "unigram"

# What BM25 reads: subject + body with HTML reduced to text, and nothing else removed.
# Measured (docs/quality.md): the embedding's URL stripping hurts BM25, since URLs carry issue
# keys and file names that match exactly; and BM25 has no 256-token window to fit.
LEXICAL_STEPS = ("html",)
# Rows read per SQL round trip when the index catches up with the table.
_REFRESH_CHUNK = 5000


def _cjk_tokens(run: str, mode: CjkMode) -> list[str]:
    if mode == "unigram" or len(run) == 1:
        return list(run)
    bigrams = [run[i : i + 2] for i in range(len(run) - 1)]
    if mode == "bigram":
        return bigrams
    if mode == "both":
        return [*run, *bigrams]
    import jieba  # measured alternative only: `pip install jieba`

    return [word for word in jieba.lcut(run) if word.strip()]


def tokenize(text: str, cjk: CjkMode = DEFAULT_CJK, *, nfkc: bool = True) -> list[str]:
    r"""Lowercased ``\w+`` tokens, CJK runs split as ``cjk`` says.

    ``nfkc``: of the NFKC form, so that full-width letters and digits (``ＡＰＰ１``, common
    in Chinese input methods) match their ASCII forms; measured in docs/quality.md.
    """
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = text.lower()
    if _IS_CJK.search(text) is None:  # most tickets: every run is a token as it is
        return _TOKEN.findall(text)
    tokens: list[str] = []
    for match in _TOKEN.findall(text):
        if _IS_CJK.match(match):
            tokens.extend(_cjk_tokens(match, cjk))
        else:
            tokens.append(match)
    return tokens


def lexical_text(subject: str | None, body: str, body_format: BodyFormat = "html") -> str:
    return prepare_text(subject, body, LEXICAL_STEPS, body_format=body_format)


def tokenizer_settings() -> dict[str, object]:
    """What decides a text's tokens: a persisted index is valid only under the same
    (worker/lexical_snapshot.py records it and refuses another)."""
    return {
        "pattern": _TOKEN.pattern,
        "cjk": DEFAULT_CJK,
        "nfkc": True,
        "steps": list(LEXICAL_STEPS),
        # NFKC and ``\w`` follow the Unicode database Python ships.
        "unicode": unicodedata.unidata_version,
    }


@dataclass(frozen=True)
class MappedPart:
    """The first ``len(lengths)`` positions of an index, read from a snapshot file: posting
    lists in compressed-sparse-row form (term row ``t`` owns ``docs[offsets[t]:offsets[t+1]]``
    and the same slice of ``tfs``). The arrays are views of a read-only memory map, so
    every worker on a host shares their pages."""

    terms: dict[str, int]
    offsets: npt.NDArray[np.int64]
    docs: npt.NDArray[np.int32]
    tfs: npt.NDArray[np.float32]
    lengths: npt.NDArray[np.float32]
    scopes: npt.NDArray[np.int32]

    def posting(self, term: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]] | None:
        row = self.terms.get(term)
        if row is None:
            return None
        lo, hi = int(self.offsets[row]), int(self.offsets[row + 1])
        return self.docs[lo:hi], self.tfs[lo:hi]

    def df(self, term: str) -> int:
        """How many of its positions hold ``term``."""
        row = self.terms.get(term)
        return 0 if row is None else int(self.offsets[row + 1] - self.offsets[row])


class _Every:
    """No scope: every indexed ticket is a candidate."""


EVERY = _Every()


#: A BM25 query: its terms and how often each occurs.
Query = Counter[str]


def query_terms(text: str) -> Query:
    return Counter(tokenize(text))


def _terms(query: str | Query) -> Query:
    return query if isinstance(query, Counter) else query_terms(query)


@dataclass(frozen=True)
class Document:
    """A text as BM25 reads it: its term counts and its length in tokens."""

    counts: Counter[str]
    length: int

    @classmethod
    def of(cls, text: str) -> Document:
        # An empty text still has length 1, as an indexed one (LexicalIndex.add).
        tokens = tokenize(text) or [""]
        return cls(Counter(tokens), len(tokens))


class LexicalIndex:
    """BM25 over tickets added one at a time; positions are stable, so scores are arrays.

    ``scope_field`` (TRIAGE_MATCH_SCOPE): each ticket is labelled with its queue or source,
    and :meth:`top` can keep to one label. Statistics (document count, frequencies) are
    those of every indexed ticket.

    An index loaded from a snapshot (worker/lexical_snapshot.py) holds its first positions in
    a :class:`MappedPart` and the tickets added since in the in-memory postings; document
    count, average length and each term's document frequency are those of both parts, so
    the scores equal those of an index built by adding every ticket.
    """

    def __init__(self, *, k1: float = 1.5, b: float = 0.75, scope_field: ScopeField = None) -> None:
        self.k1 = k1
        self.b = b
        self.scope_field: ScopeField = scope_field
        self.keys: list[TicketKey] = []
        self._position: dict[TicketKey, int] = {}
        self._lengths = array("f")
        self._total_length = 0
        # term -> (document positions, term frequencies): compact arrays, not dicts, so a
        # hundred thousand tickets cost tens of MB rather than a GB of Python objects.
        self._postings: dict[str, tuple[array[int], array[float]]] = {}
        # Each position's scope label (an index into _labels), when scope_field is set.
        self._scopes = array("i")
        self._labels: dict[str | None, int] = {}
        # The highest triage_tickets.id already read by refresh(), and per scope by
        # refresh_scope().
        self.watermark = 0
        self._scope_marks: dict[str | None, int] = {}
        self._mapped: MappedPart | None = None
        # Mapped + in-memory lengths and scope labels as one array, rebuilt when it grows.
        self._joined: dict[str, npt.NDArray[np.generic]] = {}
        # The triage_tickets.id each key was indexed from: a row read again under a higher id
        # (its text changed, worker/lifecycle.py) replaces the entry. The old position stays
        # in the statistics but never scores again (a dead position).
        self._row_ids: dict[TicketKey, int] = {}
        self._dead: set[int] = set()

    @classmethod
    def from_mapped(
        cls,
        mapped: MappedPart,
        keys: list[TicketKey],
        *,
        total_length: int,
        labels: list[str | None],
        watermark: int,
        scope_field: ScopeField = None,
    ) -> LexicalIndex:
        """An index whose first ``len(keys)`` positions are ``mapped``."""
        index = cls(scope_field=scope_field)
        index._mapped = mapped
        index.keys = keys
        index._position = dict(zip(keys, range(len(keys)), strict=True))
        index._total_length = total_length
        index._labels = {label: n for n, label in enumerate(labels)}
        index.watermark = watermark
        return index

    @property
    def mapped_size(self) -> int:
        """How many positions the mapped part holds (0 without one)."""
        return 0 if self._mapped is None else len(self._mapped.lengths)

    @property
    def total_length(self) -> int:
        return self._total_length

    @property
    def labels(self) -> list[str | None]:
        """The scope labels by their number."""
        return list(self._labels)

    def terms(self) -> list[str]:
        """Every indexed term, the mapped part's first."""
        mapped = list(self._mapped.terms) if self._mapped is not None else []
        seen = set(mapped)
        return mapped + [t for t in self._postings if t not in seen]

    def postings(
        self, term: str
    ) -> Iterator[tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]]:
        """``term``'s (positions, term frequencies), one pair per part holding it."""
        if self._mapped is not None:
            part = self._mapped.posting(term)
            if part is not None:
                yield part
        posting = self._postings.get(term)
        if posting is not None:
            yield (
                np.frombuffer(posting[0], dtype=np.int32),
                np.frombuffer(posting[1], dtype=np.float32),
            )

    def _df(self, term: str) -> int:
        # The lengths alone: no array views of the postings (scored for every term a
        # section's catch-up shares with the batch).
        posting = self._postings.get(term)
        own = 0 if posting is None else len(posting[0])
        return own if self._mapped is None else own + self._mapped.df(term)

    def lengths(self) -> npt.NDArray[np.float32]:
        """Each position's length in tokens."""
        return self._join("lengths", self._lengths, np.float32)  # type: ignore[return-value]

    def scope_labels(self) -> npt.NDArray[np.int32]:
        """Each position's scope label number."""
        return self._join("scopes", self._scopes, np.int32)  # type: ignore[return-value]

    def _join(
        self, name: str, own: array[int] | array[float], dtype: type
    ) -> npt.NDArray[np.generic]:
        tail: npt.NDArray[np.generic] = np.frombuffer(own, dtype=dtype)
        if self._mapped is None:
            return tail
        joined = self._joined.get(name)
        if joined is None or len(joined) != self.mapped_size + len(tail):
            head = self._mapped.lengths if name == "lengths" else self._mapped.scopes
            joined = self._joined[name] = np.concatenate((head, tail))
        return joined

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._position

    def position(self, key: TicketKey) -> int | None:
        return self._position.get(key)

    def add(
        self, key: TicketKey, text: str, scope: str | None = None, row_id: int | None = None
    ) -> bool:
        """Index ``text`` under ``key`` (labelled ``scope``); False (nothing changes) when
        the key is indexed, unless ``row_id`` is higher than the one it was indexed from:
        then the new text replaces the old one.

        Tickets are keyed like everywhere else: a redelivered or re-imported ticket is
        never counted twice in the document frequencies.
        """
        old = self._position.get(key)
        if old is not None:
            if row_id is None or row_id <= self._row_ids.get(key, row_id - 1):
                return False
            self._dead.add(old)
        if row_id is not None:
            self._row_ids[key] = row_id
        # An empty ticket still takes a position (and length 1, as bm25s gives it).
        tokens = tokenize(text) or [""]
        doc = len(self.keys)
        self.keys.append(key)
        self._position[key] = doc
        self._lengths.append(len(tokens))
        self._total_length += len(tokens)
        self._scopes.append(self._labels.setdefault(scope, len(self._labels)))
        for term, tf in Counter(tokens).items():
            posting = self._postings.get(term)
            if posting is None:
                posting = self._postings[term] = (array("i"), array("f"))
            posting[0].append(doc)
            posting[1].append(tf)
        return True

    def forget(self, keys: Sequence[TicketKey]) -> int:
        """Drop these tickets (purged): their positions stay, so that other positions do not
        move. An in-memory position's terms leave the postings; a mapped one (the snapshot's,
        read-only) becomes a dead position that never scores again. Returns how many."""
        dead = [p for k in keys if (p := self._position.pop(k, None)) is not None]
        if not dead:
            return 0
        base = self.mapped_size
        self._dead.update(p for p in dead if p < base)
        own = [p for p in dead if p >= base]
        if own:
            dropped = np.zeros(len(self.keys), dtype=bool)
            dropped[own] = True
            for term in list(self._postings):
                docs, tfs = self._postings[term]
                keep = ~dropped[np.frombuffer(docs, dtype=np.int32)]
                if keep.all():
                    continue
                if not keep.any():
                    del self._postings[term]
                    continue
                kept_docs = np.frombuffer(docs, dtype=np.int32)[keep]
                kept_tfs = np.frombuffer(tfs, dtype=np.float32)[keep]
                self._postings[term] = (
                    array("i", kept_docs.tobytes()),
                    array("f", kept_tfs.tobytes()),
                )
            for p in own:
                self._total_length += 1 - int(self._lengths[p - base])
                self._lengths[p - base] = 1
            self._joined.pop("lengths", None)
        return len(dead)

    def _stale(self, key: TicketKey, row_id: int, updated: bool) -> bool:
        """Whether the row ``row_id`` of ``key`` must be (re)indexed: a key not indexed, or
        indexed from a lower row id; a key a batch indexed without its row id is replaced
        only when the row was updated since (``updated``), else its row id is recorded."""
        if key not in self._position:
            return True
        known = self._row_ids.get(key)
        if known is None:
            if updated:
                return True
            self._row_ids[key] = row_id
            return False
        return row_id > known

    def scores(self, query: str | Query) -> Scores:
        """BM25 of every indexed ticket for ``query`` (a text, or its :func:`query_terms`),
        by position."""
        n = len(self.keys)
        out = np.zeros(n, dtype=np.float32)
        if n == 0:
            return out
        lengths = self.lengths()
        norm = self.k1 * (1 - self.b + self.b * lengths / (self._total_length / n))
        for term, times in _terms(query).items():
            parts = list(self.postings(term))
            if not parts:
                continue
            df = sum(len(docs) for docs, _ in parts)
            idf = np.log1p((n - df + 0.5) / (df + 0.5))
            # The parts hold disjoint positions: the same sums as one posting list.
            for docs, tf in parts:
                out[docs] += times * idf * tf / (tf + norm[docs])
        if self._dead:
            out[list(self._dead)] = 0.0
        return out

    def score_texts(self, query: str, texts: Sequence[str]) -> list[float]:
        """BM25 of ``texts`` for ``query`` under this index's statistics, as if each were
        indexed (they need not be): a few tickets committed after a snapshot, scored
        without touching the index inside the decision section."""
        return self.score_documents(query, [Document.of(text) for text in texts])

    def score_documents(self, query: str | Query, documents: Sequence[Document]) -> list[float]:
        """:meth:`score_texts` of texts tokenized once (:meth:`Document.of`)."""
        return [float(x) for x in self.score_matrix([_terms(query)], documents)[0]]

    def score_matrix(
        self, queries: Sequence[Query], documents: Sequence[Document]
    ) -> npt.NDArray[np.float64]:
        """BM25 of each document (row: query, column: document) under this index's
        statistics, as if each were indexed: the tickets committed after a snapshot, scored
        for every ticket of a batch at once (and again when the batch is routed again).

        One matrix product: each document's term weights ``tf / (tf + norm)`` and each
        query's ``times · idf`` over the terms they share, each term's frequency looked up
        once."""
        out = np.zeros((len(queries), len(documents)), dtype=np.float64)
        n = len(self.keys)
        if n == 0 or not documents or not queries:
            return out
        in_documents: set[str] = set()
        for doc in documents:
            in_documents.update(doc.counts)
        asked: set[str] = set()
        for query in queries:
            asked.update(query)
        column = {term: k for k, term in enumerate(in_documents & asked)}
        if not column:
            return out
        avgdl = self._total_length / n
        weights = np.zeros((len(documents), len(column)), dtype=np.float64)
        for j, doc in enumerate(documents):
            norm = self.k1 * (1 - self.b + self.b * doc.length / avgdl)
            for term, tf in doc.counts.items():
                k = column.get(term)
                if k is not None:
                    weights[j, k] = tf / (tf + norm)
        idf = {}
        for term in column:
            df = self._df(term)
            idf[term] = math.log1p((n - df + 0.5) / (df + 0.5))
        asking = np.zeros((len(queries), len(column)), dtype=np.float64)
        for i, query in enumerate(queries):
            for term, times in query.items():
                k = column.get(term)
                if k is not None:
                    asking[i, k] = times * idf[term]
        return asking @ weights.T  # type: ignore[no-any-return]

    def top(
        self,
        scores: Scores,
        m: int,
        *,
        exclude: TicketKey | None = None,
        scope: str | _Every | None = EVERY,
    ) -> list[int]:
        """Positions of the ``m`` best-scoring tickets (score > 0), best first; with
        ``scope``, of that scope's tickets only."""
        if m <= 0 or len(scores) == 0:
            return []
        skip = self._position.get(exclude) if exclude is not None else None
        if skip is not None or not isinstance(scope, _Every):
            scores = scores.copy()
        if skip is not None:
            scores[skip] = 0.0
        if not isinstance(scope, _Every):
            label = self._labels.get(scope)
            labels = self.scope_labels()[: len(scores)]
            scores[labels != label] = 0.0
        m = min(m, len(scores))
        best = np.argpartition(-scores, m - 1)[:m]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [int(p) for p in best if scores[p] > 0]

    def refresh(self, engine: Engine, upto: int | None = None) -> int:
        """Index the tickets stored in SQL since the last refresh (up to id ``upto``);
        returns how many."""
        added, self.watermark = self._read(engine, self.watermark, upto, None)
        if added > 1000:
            logger.info("lexical index: %d tickets added, %d in all", added, len(self))
        return added

    def refresh_scope(self, engine: Engine, scope: str | None, upto: int) -> int:
        """Index every ticket of one scope up to id ``upto``. Scopes decide in parallel,
        so tickets of different scopes commit out of id order and :meth:`refresh` can pass
        one that commits later under a lower id; within a scope they commit in id order."""
        mark = self._scope_marks.get(scope, 0)
        if mark >= upto:
            return 0
        added, self._scope_marks[scope] = self._read(engine, mark, upto, scope, scoped=True)
        return added

    def _read(
        self,
        engine: Engine,
        after: int,
        upto: int | None,
        scope: str | None,
        *,
        scoped: bool = False,
    ) -> tuple[int, int]:
        """Add the rows with ``after`` < id ≤ ``upto``; returns (added, the last id read)."""
        column = TicketRow.queue if self.scope_field == "queue" else TicketRow.source
        added = 0
        last = after
        query = select(
            TicketRow.id, TicketRow.source, TicketRow.ticket_id, column, TicketRow.updated_at
        )
        if scoped:
            query = query.where(scope_filter(self.scope_field, scope))
        with Session(engine) as session:
            for rows in pages_by_id(session, query, after=after, upto=upto, size=_REFRESH_CHUNK):
                # Keys first, texts for the new ones only: a scope's first pass re-reads
                # tickets this index already holds.
                new = {
                    int(r[0]): (TicketKey(r[1], r[2]), r[3])
                    for r in rows
                    if self._stale(TicketKey(r[1], r[2]), int(r[0]), r[4] is not None)
                }
                if new:
                    texts = session.execute(
                        select(
                            TicketRow.id, TicketRow.subject, TicketRow.body, TicketRow.body_format
                        ).where(TicketRow.id.in_(list(new)))
                    ).all()
                    for id_, subject, body, body_format in sorted(texts):
                        key, label = new[int(id_)]
                        added += self.add(
                            key,
                            lexical_text(subject, body, body_format),
                            label if self.scope_field is not None else None,
                            int(id_),
                        )
                last = int(rows[-1][0])
        # Every id up to ``upto`` was committed when it was read (the caller's snapshot).
        return added, last if upto is None else max(last, upto)


def build_index(texts: Sequence[str]) -> LexicalIndex:
    """An index of ``texts`` at positions 0..n-1 (for evaluation; keys are synthetic)."""
    index = LexicalIndex()
    for i, text in enumerate(texts):
        index.add(TicketKey("eval", str(i)), text)
    return index
