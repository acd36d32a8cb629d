"""The match window (TRIAGE_MATCH_WINDOW_DAYS): the tickets received in the last N days,
held in memory by each worker process, ranked exactly.

Only tickets received within the window are offered as matches. Chroma's ``where`` filter
on the receive time is slow and loses in-window neighbours (its filtered HNSW search), and
over-fetching unfiltered neighbours then dropping the old ones misses most of them once the
window is a small part of the history (docs/decisions/match-window.md has the figures). So
each worker holds the window's unit vectors in one float32 matrix and ranks a batch with
one matrix product: exact, and its cost grows with the window, not with the history.

Memory: (tickets in the window) x dimension x 4 bytes, per worker process (plus a key and
a few fields per ticket, and up to a quarter more of room to grow).

The index is filled at start from the vectors SQL keeps (``triage_tickets.vector``; a row
without one gets its vector from the vector store, in bulk), caught up to the snapshot's
newest ticket id before each batch is ranked (like the BM25 index), and loses the tickets
that fall out of the window as time passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from tickets.db import DecisionRow, ScopeField, TicketRow, pages_by_id, scope_filter
from tickets.model import TicketKey
from worker.store import Neighbour, VectorStore

logger = logging.getLogger(__name__)

# Rows read from SQL per query when loading or catching up.
_CHUNK = 5000
# The BM25 side has no notion of time: its pool is over-fetched this many times, then the
# tickets outside the window are dropped.
LEXICAL_OVERFETCH = 4


def window_start(days: float, now: datetime | None = None) -> datetime:
    """The oldest receive time inside a window of ``days`` ending at ``now``."""
    return (now or datetime.now(UTC)) - timedelta(days=days)


def _aware(at: datetime) -> datetime:
    # SQLite gives naive datetimes back (stored in UTC).
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class _All:
    """Every scope (a window index of the global match scope)."""


EVERY_SCOPE = _All()


class WindowIndex:
    """The in-window tickets of one worker process: vectors, keys and their metadata."""

    def __init__(self, days: float, dimension: int, *, scope_field: ScopeField = None) -> None:
        if days <= 0:
            raise ValueError("a match window needs a positive number of days")
        self.days = days
        self.dimension = dimension
        self.scope_field = scope_field
        self._n = 0
        self._matrix = np.zeros((0, dimension), np.float32)
        self._received = np.zeros(0, np.float64)  # POSIX seconds
        self._labels = np.zeros(0, np.int32)  # scope label per row
        self._keys: list[TicketKey] = []
        self._meta: list[tuple[TicketKey, str, bool]] = []  # canonical, route, readable
        self._position: dict[TicketKey, int] = {}
        self._label_of: dict[str | None, int] = {}
        # The highest ticket id read (global scope), and per scope under a scoped match:
        # scopes decide in parallel, so their tickets commit out of id order across scopes.
        self.watermark = 0
        self._scope_marks: dict[str | None, int] = {}
        self._from_store = False

    # --- contents ---------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: object) -> bool:
        return key in self._position

    @property
    def keys(self) -> list[TicketKey]:
        """The tickets held, by position."""
        return self._keys

    @property
    def nbytes(self) -> int:
        """Bytes of the vectors held (the index's size: the rest is small per ticket)."""
        return self._n * self.dimension * 4

    def start(self, now: datetime | None = None) -> datetime:
        return window_start(self.days, now)

    def admits(self, received_at: datetime, now: datetime | None = None) -> bool:
        """Whether a ticket received then is inside the window."""
        return _aware(received_at) >= self.start(now)

    def keep_in_window(
        self, keys: Sequence[TicketKey], m: int, exclude: Iterable[TicketKey] = ()
    ) -> list[TicketKey]:
        """The first ``m`` of ``keys`` that the window holds (BM25 candidates, best first)."""
        skip = set(exclude)
        return [k for k in keys if k in self._position and k not in skip][:m]

    def add(
        self,
        key: TicketKey,
        vector: np.ndarray,
        received_at: datetime,
        canonical: TicketKey,
        route: str,
        readable: bool = True,
        scope: str | None = None,
    ) -> None:
        """Add a ticket, or replace what is held of it (a re-decided ticket's metadata)."""
        pos = self._position.get(key)
        if pos is None:
            pos = self._n
            self._grow(pos + 1)
            self._n += 1
            self._keys.append(key)
            self._meta.append((canonical, route, readable))
            self._position[key] = pos
        else:
            self._meta[pos] = (canonical, route, readable)
        self._matrix[pos] = vector
        self._received[pos] = _aware(received_at).timestamp()
        self._labels[pos] = self._label_of.setdefault(scope, len(self._label_of))

    def _grow(self, size: int) -> None:
        if size <= len(self._received):
            return
        # A quarter more each time: amortised appends, at most a quarter of the vectors
        # unused (the window's memory stays close to its tickets × dimension × 4 bytes).
        capacity = max(size, len(self._received) * 5 // 4, 1024)
        matrix = np.zeros((capacity, self.dimension), np.float32)
        matrix[: self._n] = self._matrix[: self._n]
        received = np.zeros(capacity, np.float64)
        received[: self._n] = self._received[: self._n]
        labels = np.zeros(capacity, np.int32)
        labels[: self._n] = self._labels[: self._n]
        self._matrix, self._received, self._labels = matrix, received, labels

    def evict(self, now: datetime | None = None) -> int:
        """Drop the tickets received before the window's start; returns how many."""
        expired = self._received[: self._n] < self.start(now).timestamp()
        dropped = int(expired.sum())
        if not dropped:
            return 0
        keep = np.flatnonzero(~expired)
        n = len(keep)
        self._matrix[:n] = self._matrix[keep]
        self._received[:n] = self._received[keep]
        self._labels[:n] = self._labels[keep]
        self._keys = [self._keys[p] for p in keep]
        self._meta = [self._meta[p] for p in keep]
        self._position = {k: p for p, k in enumerate(self._keys)}
        self._n = n
        return dropped

    # --- ranking ----------------------------------------------------------------------

    def query(
        self,
        vectors: np.ndarray,
        depth: int,
        scope: str | _All | None = EVERY_SCOPE,
    ) -> list[list[Neighbour]]:
        """The ``depth`` nearest in-window tickets of each vector by cosine, best first (as
        the vector store's query answers; a ticket held here finds itself)."""
        if len(vectors) == 0:
            return []
        if self._n == 0 or depth <= 0:
            return [[] for _ in range(len(vectors))]
        n = self._n
        # (batch, held): each query's scores contiguous, partitioned in place (no copy).
        scores = np.asarray(vectors, np.float32) @ self._matrix[:n].T
        if not isinstance(scope, _All):
            label = self._label_of.get(scope)
            scores[:, self._labels[:n] != label] = -np.inf
        m = min(depth, n)
        best = np.argpartition(scores, n - m, axis=1)[:, n - m :]  # the m best, unordered
        out: list[list[Neighbour]] = []
        for row, held in enumerate(best):
            held = held[np.argsort(-scores[row, held], kind="stable")]
            found = []
            for p in held:
                score = float(scores[row, p])
                if score == -np.inf:
                    break
                canonical, route, readable = self._meta[p]
                found.append(Neighbour(self._keys[p], score, canonical, route, readable))
            out.append(found)
        return out

    # --- loading and catching up from SQL ---------------------------------------------

    def load(
        self,
        engine: Engine,
        store: VectorStore,
        now: datetime | None = None,
        *,
        from_store: bool = False,
    ) -> int:
        """Fill the index with every in-window ticket SQL holds (at a worker's start);
        returns how many were added. ``from_store``: every vector from the vector store
        (after a `triage reindex` switch, SQL's kept vectors may still be the old
        collection's until the reindex rewrites them)."""
        self._from_store = from_store
        try:
            added, last = self._read(engine, store, after=0, upto=None, scope=EVERY_SCOPE, now=now)
        finally:
            self._from_store = False
        self.watermark = max(self.watermark, last)
        logger.info(
            "match window of %g days: %d tickets, %.1f MB of vectors",
            self.days,
            len(self),
            self.nbytes / 1e6,
        )
        return added

    def refresh(
        self,
        engine: Engine,
        store: VectorStore,
        upto: int,
        *,
        scope: str | _All | None = EVERY_SCOPE,
        ids: Sequence[int] = (),
        now: datetime | None = None,
    ) -> int:
        """Catch up to ticket id ``upto`` (the snapshot's newest of the scope), re-read
        ``ids`` (tickets whose vector or decision may have changed: not yet in the vector
        store), and drop the tickets the window has left; returns how many were added."""
        self.evict(now)
        # A scope's first catch-up re-reads its in-window tickets: tickets of another
        # scope may have committed under a lower id after the load.
        mark = self.watermark if isinstance(scope, _All) else self._scope_marks.get(scope, 0)
        added = 0
        if mark < upto:
            added, _ = self._read(engine, store, after=mark, upto=upto, scope=scope, now=now)
            if isinstance(scope, _All):
                self.watermark = upto
            else:
                self._scope_marks[scope] = upto
        if ids:
            self._read(engine, store, after=0, upto=None, scope=EVERY_SCOPE, ids=ids, now=now)
        return added

    def _read(
        self,
        engine: Engine,
        store: VectorStore,
        *,
        after: int,
        upto: int | None,
        scope: str | _All | None,
        ids: Sequence[int] = (),
        now: datetime | None = None,
    ) -> tuple[int, int]:
        """Add the in-window rows with ``after`` < id ≤ ``upto`` (or among ``ids``);
        returns (added, the last id read)."""
        column = TicketRow.queue if self.scope_field == "queue" else TicketRow.source
        start = self.start(now)
        added = 0
        last = after
        query = (
            select(
                TicketRow.id,
                TicketRow.source,
                TicketRow.ticket_id,
                TicketRow.received_at,
                TicketRow.vector,
                TicketRow.readable,
                column,
                DecisionRow.route,
                DecisionRow.canonical_source,
                DecisionRow.canonical_ticket_id,
            )
            .outerjoin(
                DecisionRow,
                (DecisionRow.source == TicketRow.source)
                & (DecisionRow.ticket_id == TicketRow.ticket_id),
            )
            .where(TicketRow.received_at >= start)
        )
        if ids:
            query = query.where(TicketRow.id.in_(list(ids)))
        if not isinstance(scope, _All):
            query = query.where(scope_filter(self.scope_field, scope))
        with Session(engine) as session:
            for rows in pages_by_id(session, query, after=after, upto=upto, size=_CHUNK):
                added += self._add_rows(rows, store)
                last = int(rows[-1][0])
        return added, last

    def _add_rows(self, rows: Sequence[Any], store: VectorStore) -> int:
        """Add SQL rows; those without a kept vector of this dimension take the store's."""

        def kept(r: Any) -> bool:
            return (
                not self._from_store
                and r.vector is not None
                and len(r.vector) == 4 * self.dimension
            )

        missing = [TicketKey(r.source, r.ticket_id) for r in rows if not kept(r)]
        fetched = store.fetch(missing, remember=False) if missing else {}
        added = 0
        for r in rows:
            key = TicketKey(r.source, r.ticket_id)
            if kept(r):
                vector = np.frombuffer(r.vector, dtype="<f4")
            elif key in fetched:
                vector = fetched[key][0]
            else:
                continue  # no vector anywhere yet: its batch publishes it, a re-read adds it
            decided = r.route is not None
            canonical = TicketKey(r.canonical_source, r.canonical_ticket_id) if decided else key
            scope = r[6] if self.scope_field is not None else None
            added += key not in self._position
            self.add(
                key,
                vector,
                r.received_at,
                canonical,
                r.route if decided else "history",
                bool(r.readable),
                scope,
            )
        return added
