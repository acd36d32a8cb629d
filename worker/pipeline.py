"""One batch of tickets, from text to decision rows: the triage domain, with no Celery in it.

Follow one ticket through :func:`triage_batch`:

1. **Look up** what SQL already knows of each key. A ticket decided before (a redelivery or
   a re-import) is never decided again and never matched against itself; it only gets
   its vector re-stored (from the copy SQL keeps) if the store lost it.
2. **Embed** every ticket that needs a vector in ONE embedder call. If the embedder
   rejects the batch as a whole (one poison input), each ticket is embedded alone so that
   only the poison one fails and its batch-mates go on.
3. **Decide**, one match scope at a time (TRIAGE_MATCH_SCOPE: every ticket, or each queue
   or source apart):

   a. *Snapshot*, outside any lock: the newest ticket id committed in the scope (W) and
      the tickets whose vector has not reached the store yet (P); the BM25 index caught
      up to W; one store query for the batch's nearest neighbours, BM25 over the index,
      the lexical-only candidates' vectors fetched.
   b. *Plan*, still outside the lock: the tickets committed since the snapshot (id above
      W) and those in P are read from SQL with their vectors and decisions (the catch-up:
      usually none or a few) and join each ticket's candidates with their exact cosine and
      BM25 score; then routing in order (:func:`worker.routing.decide`) gives the rows to
      write.
   c. *Section* (one at a time per scope across all workers; see ``Services.lock``): one
      light query tells whether the plan's view still holds (none of the batch's keys
      stored since, the same tickets committed since W). If so the plan is written as it
      is; if not (another worker committed in the scope meanwhile) the batch is routed
      again on the view with what was committed, under the lock, unless that is what the
      holder before handed it (worker/handoff.py) and it was routed on it while waiting.
      Then its own rows are handed to the next waiter, and one SQL transaction writes the
      ticket rows (their vectors included) and the decision rows, fenced.
   d. *Publish*, after the lock: one upsert of the vectors into the store, then
      ``indexed_at`` on those rows. SQL first: a crash in between leaves decisions whose
      vectors SQL holds, caught up by every later section and re-stored by the next batch
      of any worker or by the redelivery; never a vector without a decision (a phantom
      that later tickets could match).

Committed tickets of a scope have increasing ids (they are written one section at a time),
so "id above W" is exactly "decided after the snapshot": each ticket is still compared with
every ticket decided before it, including its earlier batch-mates.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tickets import db
from tickets import purge as purge_sql
from tickets.errors import (
    CollectionSwitched,
    EmbeddingRejected,
    PermanentError,
    StoreUnavailable,
    TriageError,
)
from tickets.model import Ticket, TicketKey
from worker import handoff
from worker.embedding import Embedder, Vectors
from worker.hybrid import DEFAULT_ALPHA, DEFAULT_POOL
from worker.lexical import EVERY, Document, LexicalIndex, Query, lexical_text, query_terms
from worker.routing import Bar, Outcome, Thresholds, decide
from worker.store import Neighbour, VectorStore
from worker.text import DEFAULT_SUBJECT_WEIGHT, content_hash, embed_tickets, embedding_text
from worker.window import EVERY_SCOPE, LEXICAL_OVERFETCH, WindowIndex

if TYPE_CHECKING:
    from actions.outbox import Outbox
    from worker.coverage import CoverageGuard
    from worker.decision_lock import FenceCheck, Section

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

Mode = Literal["route", "backfill"]
# The Redis lock that serialises decision sections across worker processes (and `triage
# reindex`'s switch-over) when they share a Chroma server; a match scope's lock is named
# after it (scope_lock_name).
DECISION_LOCK = "triage:decide"
# A ticket whose vector has not reached the store this long after its commit is re-stored
# from SQL by the next batch of any worker (its own worker normally does it within
# milliseconds; a crash or a store outage in between leaves it to others).
REPAIR_AFTER_S = 5.0


class ThresholdSource(Protocol):
    """Thresholds for a ticket's queue: a single Thresholds, or a calibrated ThresholdTable."""

    def for_queue(self, queue: str | None) -> Thresholds: ...


class SectionLock(Protocol):
    """``with lock(while_waiting=f, handed=g) as section``: one section at a time (None: no
    fence). ``f``, when given, runs while the caller waits, each time another holder has
    left (worker/decision_lock.py): what it committed can be caught up with outside the
    lock; ``g`` with what the holder hands the first waiter before its commit
    (worker/handoff.py)."""

    def __call__(
        self,
        *,
        while_waiting: Callable[[], None] | None = None,
        handed: Callable[[bytes], None] | None = None,
    ) -> AbstractContextManager[Section | None]: ...


class ScopeLock(Protocol):
    """A :class:`SectionLock` per match scope, by the lock's name (:func:`scope_lock_name`)."""

    def __call__(
        self,
        name: str,
        *,
        while_waiting: Callable[[], None] | None = None,
        handed: Callable[[bytes], None] | None = None,
    ) -> AbstractContextManager[Section | None]: ...


def unlocked(
    *,
    while_waiting: Callable[[], None] | None = None,
    handed: Callable[[bytes], None] | None = None,
) -> AbstractContextManager[None]:
    """The section of a process that owns its store alone: nothing to wait for."""
    return contextlib.nullcontext()


class PurgeFollower(Protocol):
    def catch_up(self, services: Services) -> int: ...


@dataclass(frozen=True)
class WorkItem:
    ticket: Ticket
    mode: Mode = "route"


@dataclass(frozen=True)
class ItemResult:
    """What happened to one ticket: a route, 'stored' (history), 'unchanged', or an error."""

    status: str
    outcome: Outcome | None = None
    error: TriageError | None = None


@dataclass
class SectionHooks:
    """Called with the keys of the scope's part of a batch at three points: after its
    snapshot (before the lock is asked for), inside the section before the write, and
    after the commit (before the vectors are published). For fault injection and traces."""

    after_snapshot: Callable[[list[TicketKey]], None] | None = None
    in_section: Callable[[list[TicketKey]], None] | None = None
    after_commit: Callable[[list[TicketKey]], None] | None = None


@dataclass
class Services:
    """Everything a batch needs, created once per worker process and passed in."""

    embedder: Embedder
    store: VectorStore
    engine: Engine
    thresholds: ThresholdSource
    top_k: int
    # Serialises the decision section across worker processes when several share a Chroma
    # server (worker/decision_lock.py: a Redis lock and a SQL fence; it yields the section
    # whose commit is fenced); a no-op yielding None when one process owns the embedded store.
    lock: SectionLock = field(default=unlocked)
    # TRIAGE_MATCH_SCOPE: None matches every ticket with every other; "queue" or "source"
    # only within one queue or source, each scope deciding under its own lock, from
    # ``scope_lock`` (given the lock's name); without it, ``lock`` serves every scope.
    match_scope: db.ScopeField = None
    scope_lock: ScopeLock | None = None
    # Weight of the subject's own vector in a ticket's vector (worker/text.embed_tickets).
    subject_weight: float = DEFAULT_SUBJECT_WEIGHT
    # Language-coverage guard (worker/coverage.py); None when the model has no tokenizer here.
    coverage: CoverageGuard | None = None
    # Called before each scope's snapshot, outside the lock: lets a worker sharing a Chroma
    # server follow a `triage reindex` switch (worker/runtime.py).
    before_decide: Callable[[], None] | None = None
    # Hybrid ranking (worker/hybrid.py): this process's BM25 index of the stored tickets,
    # None for dense ranking only.
    lexical: LexicalIndex | None = None
    hybrid_alpha: float = DEFAULT_ALPHA
    hybrid_pool: int = DEFAULT_POOL
    # Vectors by content (VectorCache below); None: every text is embedded.
    vector_cache: VectorCache | None = None
    # This process's own section: the batch's and a search's use of the store and of the
    # lexical index (whose arrays a reader must not hold while a batch appends to them).
    local_lock: threading.Lock = field(default_factory=threading.Lock)
    repair_after_s: float = REPAIR_AFTER_S
    hooks: SectionHooks = field(default_factory=SectionHooks)
    # The outbox (actions/outbox.py): a decision's actions are inserted in its transaction;
    # None: decisions cause nothing outside.
    outbox: Outbox | None = None
    # TRIAGE_MATCH_WINDOW_DAYS (worker/window.py): the in-window tickets this process ranks
    # against instead of the store; None: every stored ticket is a candidate.
    window: WindowIndex | None = None
    # Purges (worker/purge.py PurgeWatch): tombstones applied at the start of each batch;
    # None: no purges followed (tests of the pipeline alone).
    purges: PurgeFollower | None = None
    # TRIAGE_MATCH_STATUSES: the ticket statuses that may be offered as matches; None: all.
    # Applied inside the section against SQL (the statuses' source of truth), over a snapshot
    # fetched MATCH_OVERFETCH times deeper so that excluded tickets leave enough candidates.
    match_statuses: tuple[str, ...] | None = None


# How much deeper the snapshot ranks when TRIAGE_MATCH_STATUSES leaves out a status a large
# share of the history may have (solved, closed...). Leaving out only `deleted` (the
# default) ranks as deep as without a filter: deleted tickets are few, and one among a
# ticket's candidates only shortens its list by one.
MATCH_OVERFETCH = 3


def overfetch(statuses: Sequence[str] | None) -> int:
    """The snapshot's depth factor for TRIAGE_MATCH_STATUSES ``statuses``."""
    if statuses is None or {"open", "pending", "solved", "closed"} <= set(statuses):
        return 1
    return MATCH_OVERFETCH


def triage_batch(items: Sequence[WorkItem], services: Services) -> list[ItemResult]:
    """Triage a batch; return one ItemResult per item, in order.

    Raises a TransientError (embedder down, store or database unreachable) for the whole
    batch: nothing was written then, or only idempotent writes, so the caller retries.
    """
    return finish_batch(prepare_batch(items, services), services)


@dataclass
class PreparedBatch:
    """A batch after steps 1-2 (lookup, embedding), waiting for its decision."""

    items: Sequence[WorkItem]
    results: dict[int, ItemResult]
    first_of: dict[TicketKey, int]
    todo: list[int]
    texts: dict[int, str]
    vectors: dict[int, np.ndarray]
    # Decided before, its vector missing from the store and kept in SQL: re-stored from
    # there in step 3, not embedded again.
    restore: dict[int, db.KnownTicket] = field(default_factory=dict)


def prepare_batch(items: Sequence[WorkItem], services: Services) -> PreparedBatch:
    """Steps 1-2, outside the lock: the worker's batcher runs them for the next batch while
    the previous one is being decided (the model and the stores overlap)."""
    results: dict[int, ItemResult] = {}
    first_of: dict[TicketKey, int] = {}
    unique: list[int] = []
    # Decide in arrival order: worker threads hand messages to the batcher in whatever order
    # the scheduler runs them, and the ticket that reached the helpdesk first must be the one
    # its later twins link to. The sort is stable, so equal times keep delivery order.
    for i in sorted(range(len(items)), key=lambda i: items[i].ticket.received_at):
        item = items[i]
        # The same key twice in one batch (a redelivery racing its original): decide once.
        if item.ticket.key in first_of:
            continue
        first_of[item.ticket.key] = i
        unique.append(i)

    keys = [items[i].ticket.key for i in unique]
    known = with_session(lambda s: db.known_tickets(s, keys), services.engine)

    # Which tickets need a vector now.
    needs_vector: list[int] = []
    restore: dict[int, db.KnownTicket] = {}
    already_stored: set[TicketKey] = set()
    settled = [i for i in unique if _settled(items[i], known.get(items[i].ticket.key))]
    if settled:
        already_stored = services.store.present([items[i].ticket.key for i in settled])
    for i in unique:
        key = items[i].ticket.key
        if i in settled and key in already_stored:
            results[i] = ItemResult("unchanged", _outcome_of(known[key]))
        elif i in settled and _kept_vector(known[key], services.embedder.dimension) is not None:
            restore[i] = known[key]
        else:
            needs_vector.append(i)

    texts: dict[int, str] = {}
    for i in list(needs_vector):
        try:
            texts[i] = embedding_text(items[i].ticket)
        except Exception as exc:  # one ticket's text must never fail its batch-mates
            logger.warning("text preparation failed for %s: %r", items[i].ticket.key, exc)
            results[i] = ItemResult(
                "failed", error=EmbeddingRejected(f"text preparation failed: {exc!r}")
            )
            needs_vector.remove(i)
    subjects = {i: items[i].ticket.subject for i in needs_vector}
    vectors, rejected = _embed(needs_vector, texts, subjects, services)
    for i, err in rejected.items():
        results[i] = ItemResult("failed", error=err)
    todo = [i for i in needs_vector if i not in rejected]
    return PreparedBatch(items, results, first_of, todo, texts, vectors, restore)


def finish_batch(batch: PreparedBatch, services: Services) -> list[ItemResult]:
    """Step 3, one match scope after the other, then one result per item, in order."""
    items, results = batch.items, batch.results
    with services.local_lock:
        if services.purges is not None:
            services.purges.catch_up(services)
        if batch.restore:
            results.update(_restore(items, batch.restore, services))
        for scope, part in _parts(items, batch.todo, services.match_scope).items():
            results.update(_decide_scope(batch, part, scope, services))

    for i, item in enumerate(items):
        if i not in results:  # a repeated key: same result as its first occurrence
            results[i] = results[batch.first_of[item.ticket.key]]
    return [results[i] for i in range(len(items))]


def scope_of(ticket: Ticket, scope: db.ScopeField) -> str | None:
    """The value a ticket is matched within (None under the global scope, or no queue)."""
    if scope is None:
        return None
    return ticket.queue if scope == "queue" else ticket.source


def scope_lock_name(scope: db.ScopeField, value: str | None) -> str:
    """The decision lock (and fence row) of one match scope: a digest, since queue names
    are free text."""
    if scope is None:
        return DECISION_LOCK
    digest = hashlib.sha256(json.dumps([scope, value]).encode()).hexdigest()[:16]
    return f"{DECISION_LOCK}:{digest}"


def _parts(
    items: Sequence[WorkItem], todo: list[int], scope: db.ScopeField
) -> dict[str | None, list[int]]:
    """The batch's tickets by match scope, in order of first appearance."""
    parts: dict[str | None, list[int]] = {}
    for i in todo:
        parts.setdefault(scope_of(items[i].ticket, scope), []).append(i)
    return parts


def _settled(item: WorkItem, known: db.KnownTicket | None) -> bool:
    """Nothing left to decide: routed before, or history already stored."""
    if known is None:
        return False
    return known.decision is not None or (item.mode == "backfill")


def _kept_vector(known: db.KnownTicket, dimension: int) -> np.ndarray | None:
    """The vector SQL keeps for a ticket, if any and of this model's dimension."""
    return decode_vector(known.vector, dimension)


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vector(data: bytes | None, dimension: int) -> np.ndarray | None:
    """A kept vector, or None (none kept, or another dimension: another model's)."""
    if data is None or len(data) != 4 * dimension:
        return None
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _outcome_of(known: db.KnownTicket) -> Outcome | None:
    d = known.decision
    if d is None:
        return None
    key = TicketKey(d.source, d.ticket_id)
    canonical = TicketKey(d.canonical_source, d.canonical_ticket_id)
    matches = tuple(
        Neighbour(
            TicketKey(m["source"], m["ticket_id"]),
            m["score"],
            canonical,
            "",
            fused=m.get("fused_score"),
        )
        for m in d.matches
    )
    return Outcome(
        key,
        d.route,  # type: ignore[arg-type]
        d.score,
        matches,
        canonical,
        d.reason,
        "hybrid" if d.ranked_by == "hybrid" else "cosine",
    )


def _known_meta(key: TicketKey, known: db.KnownTicket) -> dict[str, Any]:
    """A decided (or stored) ticket's vector metadata, from what SQL holds of it."""
    d = known.decision
    if d is None:
        return vector_meta(key, key, "history", known.readable, known.queue)
    canonical = TicketKey(d.canonical_source, d.canonical_ticket_id)
    return vector_meta(key, canonical, d.route, known.readable, known.queue)


def _restore(
    items: Sequence[WorkItem], restore: dict[int, db.KnownTicket], services: Services
) -> dict[int, ItemResult]:
    """Re-store decided tickets' lost vectors from the copies SQL keeps (no embedding)."""
    keys = [items[i].ticket.key for i in restore]
    dim = services.embedder.dimension
    vectors = [_kept_vector(k, dim) for k in restore.values()]  # all kept: prepare_batch
    services.store.upsert(
        keys,
        np.stack(vectors),  # type: ignore[arg-type]
        [_known_meta(key, k) for key, k in zip(keys, restore.values(), strict=True)],
    )
    with_session(
        lambda s: db.mark_indexed(s, keys, datetime.now(UTC)), services.engine, commit=True
    )
    logger.info("re-stored %d vectors from SQL", len(keys))
    return {i: ItemResult("unchanged", _outcome_of(k)) for i, k in restore.items()}


# --- the section's instrumentation ----------------------------------------------------------

# The last section times of this process (seconds, lock held), newest last: for benchmarks
# and traces (bench/ reads them with section_times()); logged at DEBUG per section.
_SECTION_TIMES: deque[float] = deque(maxlen=100_000)
_SECTION_WAITS: deque[float] = deque(maxlen=100_000)
_SECTION_CAUGHT_UP: deque[bool] = deque(maxlen=100_000)


def section_times() -> list[float]:
    """Seconds each decision section of this process held its lock, oldest first."""
    return list(_SECTION_TIMES)


def section_waits() -> list[float]:
    """Seconds each decision section of this process waited for its lock, oldest first."""
    return list(_SECTION_WAITS)


def sections_caught_up() -> list[bool]:
    """For each decision section of this process, oldest first, whether it caught up inside
    the lock with tickets committed since its plan's view (False: its view held, or what
    was committed is what the holder before handed it, caught up with while waiting)."""
    return list(_SECTION_CAUGHT_UP)


class _Collector:
    """Python's cyclic garbage collector, paused while this process holds a decision lock.

    A collection runs when enough objects were allocated, wherever that happens, and a
    section allocates (the catch-up, the rows): a full collection there would hold every
    worker's lock for its whole pause (300-400 ms at 100,000 stored tickets, measured by
    bench/critical_section.py). Paused, what the section allocates is collected after it.
    Sections of several scopes may run at once in one process: the first in pauses, the
    last out resumes, and a collector the process had switched off stays off."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._resume = False

    @contextlib.contextmanager
    def held_off(self) -> Iterator[Callable[[], None]]:
        """Yields ``pause``: from its call to this context's end, no collection runs (a lock
        entered inside the context is released before the collector resumes, so what was
        allocated under it is collected after the release)."""
        paused = False

        def pause() -> None:
            nonlocal paused
            if paused:
                return
            with self._lock:
                if self._holders == 0:
                    self._resume = gc.isenabled()
                    gc.disable()
                self._holders += 1
            paused = True

        try:
            yield pause
        finally:
            if paused:
                with self._lock:
                    self._holders -= 1
                    if self._holders == 0 and self._resume:
                        gc.enable()


collector = _Collector()


class VectorCache:
    """The vectors of recently embedded texts, by content: a ticket retried after a
    transient error (database or store down in its critical section), re-imported under
    another key, or sent twice by a helpdesk is not embedded again. Per process, bounded,
    least recently used first out; only ever holds this process's model's vectors."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0

    @staticmethod
    def key(text: str, subject: str | None) -> str:
        return content_hash(f"{subject or ''}\x00{text}")

    def get(self, key: str) -> np.ndarray | None:
        vector = self._vectors.get(key)
        if vector is not None:
            self._vectors.move_to_end(key)
            self.hits += 1
        return vector

    def clear(self) -> None:
        self._vectors.clear()

    def put(self, key: str, vector: np.ndarray) -> None:
        self._vectors[key] = vector
        self._vectors.move_to_end(key)
        while len(self._vectors) > self.max_entries:
            self._vectors.popitem(last=False)


def _embed(
    indices: list[int], texts: dict[int, str], subjects: dict[int, str | None], services: Services
) -> tuple[dict[int, np.ndarray], dict[int, TriageError]]:
    cache = services.vector_cache
    if cache is None:
        return _embed_uncached(indices, texts, subjects, services)
    keys = {i: cache.key(texts[i], subjects[i]) for i in indices}
    cached = {i: v for i in indices if (v := cache.get(keys[i])) is not None}
    vectors, rejected = _embed_uncached(
        [i for i in indices if i not in cached], texts, subjects, services
    )
    for i, vector in vectors.items():
        cache.put(keys[i], vector)
    return {**cached, **vectors}, rejected


def _embed_uncached(
    indices: list[int], texts: dict[int, str], subjects: dict[int, str | None], services: Services
) -> tuple[dict[int, np.ndarray], dict[int, TriageError]]:
    if not indices:
        return {}, {}

    def embed(some: list[int]) -> Vectors:
        return embed_tickets(
            services.embedder.embed,
            [texts[i] for i in some],
            [subjects[i] for i in some],
            services.subject_weight,
        )

    try:
        batch = embed(indices)
        return dict(zip(indices, batch, strict=True)), {}
    except PermanentError:
        if len(indices) == 1:
            raise
    # One input poisoned the whole call (e.g. Ollama answers 400 for the batch): find it by
    # embedding each alone. Costs N calls once, only on this rare path.
    vectors: dict[int, np.ndarray] = {}
    rejected: dict[int, TriageError] = {}
    for i in indices:
        try:
            vectors[i] = embed([i])[0]
        except PermanentError as exc:
            logger.warning("embedder rejected one ticket of a batch: %s", exc)
            rejected[i] = exc
    return vectors, rejected


# --- step 3: snapshot, section, publish -----------------------------------------------------


@dataclass
class Ranked:
    """One routed ticket's candidates as the snapshot found them."""

    dense: list[Neighbour]  # the store's nearest, best first (``depth`` of them)
    # BM25: the pool best by score in the index (earlier batch-mates included), and the
    # scores of the dense candidates and earlier batch-mates
    lexical_top: dict[TicketKey, float] = field(default_factory=dict)
    lexical_known: dict[TicketKey, float] = field(default_factory=dict)
    # Candidates found by BM25 alone, and those of them with a vector in the store, with
    # their cosine (fetched outside the lock)
    lexical_wanted: list[TicketKey] = field(default_factory=list)
    lexical_only: dict[TicketKey, Neighbour] = field(default_factory=dict)


@dataclass
class Snapshot:
    """What a scope's part of a batch is ranked on, outside the lock."""

    scope: str | None
    newest: int  # W: the highest ticket id committed in the scope
    unindexed: list[int]  # P: ticket ids whose vectors had not reached the store
    collection: str
    depth: int
    ranked: dict[int, Ranked]  # by item index, routed tickets only
    queries: dict[int, Query]  # BM25 query terms by item index, tokenized once
    reasons: dict[int, str | None]
    ratios: dict[int, float | None]
    # TRIAGE_MATCH_STATUSES: the candidates whose status was left out when ranked
    excluded: set[TicketKey] = field(default_factory=set)


@dataclass
class Written:
    """A committed section: what to publish to the store after the lock."""

    results: dict[int, ItemResult]
    keys: list[TicketKey]
    vectors: list[np.ndarray]
    metas: list[dict[str, Any]]
    # Tickets stored before vectors were kept in SQL, re-embedded now: their copy is kept.
    fill: dict[TicketKey, bytes]


def _decide_scope(
    batch: PreparedBatch, part: list[int], scope: str | None, services: Services
) -> dict[int, ItemResult]:
    """Step 3 for one match scope's tickets of the batch."""
    items = batch.items
    keys = [items[i].ticket.key for i in part]
    if services.before_decide is not None:
        # Outside the lock: a switch made later is caught by the commit, which checks the
        # active collection after its fence (_check_collection) and gives the batch back.
        services.before_decide()
    store = services.store
    snapshot = _snapshot(batch, part, scope, services)
    plan = _plan(batch, part, snapshot, services)
    if services.hooks.after_snapshot is not None:
        services.hooks.after_snapshot(keys)
    lock: SectionLock = services.lock
    if services.match_scope is not None and services.scope_lock is not None:
        name = scope_lock_name(services.match_scope, scope)

        def lock(
            *,
            while_waiting: Callable[[], None] | None = None,
            handed: Callable[[bytes], None] | None = None,
        ) -> AbstractContextManager[Section | None]:
            assert services.scope_lock is not None
            return services.scope_lock(name, while_waiting=while_waiting, handed=handed)

    replans = 0

    def while_waiting() -> None:
        nonlocal plan, replans
        plan = _replanned(batch, part, snapshot, services, plan)
        replans += 1

    def handed(data: bytes) -> None:
        nonlocal plan
        rows = handoff.decode(data)
        if rows:
            plan = replace(plan, ahead=_ahead(batch, part, snapshot, services, plan, rows))

    asked = time.perf_counter()
    # The section's connection is checked out (and pinged) before the lock is asked for,
    # so the lock is held for the section's own statements; and no garbage collection runs
    # from the lock's entry to its release.
    with (
        session_of(services.engine, checked_out=True) as session,
        collector.held_off() as pause,
        lock(while_waiting=while_waiting, handed=handed) as section,
    ):
        pause()
        entered = time.perf_counter()
        written, caught_up, inside = _section(
            batch, part, snapshot, services, section, plan, session
        )
        left = time.perf_counter()
    _SECTION_TIMES.append(left - entered)
    _SECTION_WAITS.append(entered - asked)
    _SECTION_CAUGHT_UP.append(inside)
    logger.debug(
        "decision section: %.2f ms held, %.2f ms waited (%d plans brought up to date), "
        "%d tickets, %d caught up (%s) (scope %s)",
        (left - entered) * 1000,
        (entered - asked) * 1000,
        replans,
        len(part),
        caught_up,
        "in the section" if inside else "before it",
        scope,
    )
    if services.hooks.after_commit is not None:
        services.hooks.after_commit(keys)
    _publish(written, store, services)
    return written.results


def _snapshot(
    batch: PreparedBatch, part: list[int], scope: str | None, services: Services
) -> Snapshot:
    """Step 3a: rank the part against what is committed now, outside the lock."""
    items, vectors = batch.items, batch.vectors
    field_ = services.match_scope

    def marks(session: Session) -> tuple[int, list[tuple[int, datetime]]]:
        # P first: a ticket indexed by then was in the store before the query below.
        unindexed = db.unindexed_tickets(session)
        return db.newest_ticket_id(session, field_, scope), unindexed

    newest, unindexed = with_session(marks, services.engine)
    unindexed = _repair_stale(unindexed, services)
    if services.lexical is not None:
        if field_ is None:
            services.lexical.refresh(services.engine, newest)
        else:
            services.lexical.refresh(services.engine)
            services.lexical.refresh_scope(services.engine, scope, newest)

    routed = [i for i in part if items[i].mode == "route"]
    # +1: a ticket stored as history and now routed finds itself first; it is skipped.
    depth = services.top_k + 1
    if services.lexical is not None:
        depth = max(depth, services.hybrid_pool + 1)
    depth *= overfetch(services.match_statuses)
    where: dict[str, Any] | None = None if field_ is None else {field_: _meta_scope(scope)}
    query = _stack([vectors[i] for i in routed], services)
    if services.window is not None:
        pending = [id_ for id_, _ in unindexed]
        found = _window_query(services.window, query, depth, scope, newest, pending, services)
    else:
        found = services.store.query(query, depth, where)
    ranked = {i: Ranked(list(nbs)) for i, nbs in zip(routed, found, strict=True)}
    queries: dict[int, Query] = {}
    if services.lexical is not None:
        _lexical_snapshot(items, part, ranked, queries, scope, services)
        fetched = services.store.fetch(
            list(dict.fromkeys(k for r in ranked.values() for k in r.lexical_wanted))
        )
        for i, r in ranked.items():
            r.lexical_only = {
                k: replace(fetched[k][1], score=float(fetched[k][0] @ vectors[i]))
                for k in r.lexical_wanted
                if k in fetched
            }

    excluded: set[TicketKey] = set()
    if services.match_statuses is not None:
        statuses = services.match_statuses
        candidates = [k for r in ranked.values() for k in _ranked_keys(r)]
        excluded = with_session(
            lambda s: db.excluded_keys(s, candidates, statuses), services.engine
        )

    reasons: dict[int, str | None] = dict.fromkeys(part)
    ratios: dict[int, float | None] = dict.fromkeys(part)
    if services.coverage is not None and part:
        measured = services.coverage.unknown_ratios([batch.texts[i] for i in part])
        for i, ratio in zip(part, measured, strict=True):
            ratios[i] = ratio
            reasons[i] = services.coverage.reason(ratio) if ratio is not None else None
    return Snapshot(
        scope,
        newest,
        [id_ for id_, _ in unindexed],
        services.store.collection_name,
        depth,
        ranked,
        queries,
        reasons,
        ratios,
        excluded,
    )


def _window_query(
    window: WindowIndex,
    vectors: Vectors,
    depth: int,
    scope: str | None,
    newest: int,
    unindexed: list[int],
    services: Services,
) -> list[list[Neighbour]]:
    """The dense side under a match window: the window caught up to the snapshot (the
    scope's newest ticket, and the tickets not yet in the store re-read), then ranked
    exactly in memory, as the store would answer."""
    within = EVERY_SCOPE if services.match_scope is None else scope
    window.refresh(services.engine, services.store, newest, scope=within, ids=unindexed)
    return window.query(vectors, depth, within)


def _meta_scope(value: str | None) -> str:
    """A scope value as vector metadata holds it (Chroma metadata has no null)."""
    return value or ""


def _stack(vectors: list[np.ndarray], services: Services) -> Vectors:
    if not vectors:
        return np.zeros((0, services.embedder.dimension), np.float32)
    return np.stack(vectors).astype(np.float32)


def _lexical_snapshot(
    items: Sequence[WorkItem],
    part: list[int],
    ranked: dict[int, Ranked],
    queries: dict[int, Query],
    scope: str | None,
    services: Services,
) -> None:
    """BM25 of each routed ticket's candidates, in order: the batch's tickets enter the
    index one after the other, so ticket n is scored against the stored tickets and its
    earlier batch-mates, as routing compares it. The lexical-only candidates are left
    in ``lexical_wanted`` (their vectors are fetched after)."""
    index = services.lexical
    assert index is not None
    within: str | object | None = EVERY if services.match_scope is None else scope
    for n, i in enumerate(part):
        ticket = items[i].ticket
        text = lexical_text(ticket.subject, ticket.body, ticket.body_format)
        queries[i] = query_terms(text)
        if i in ranked:
            r = ranked[i]
            known = {nb.key for nb in r.dense} | {items[j].ticket.key for j in part[:n]}
            scores = index.scores(queries[i])
            window = services.window
            top = [
                index.keys[p]
                for p in index.top(
                    scores,
                    services.hybrid_pool * (1 if window is None else LEXICAL_OVERFETCH),
                    exclude=ticket.key,
                    scope=within,  # type: ignore[arg-type]
                )
            ]
            if window is not None:  # earlier batch-mates are compared by routing itself
                top = window.keep_in_window(top, services.hybrid_pool)
            r.lexical_top = {key: float(scores[index.position(key)]) for key in top}  # type: ignore[index]
            r.lexical_known = {
                key: float(scores[pos]) for key in known if (pos := index.position(key)) is not None
            }
            r.lexical_wanted = [k for k in top if k not in known]
        index.add(ticket.key, text, scope if services.match_scope is not None else None)


@dataclass
class View:
    """What a scope's part of a batch is routed on, from SQL: what is known of its keys, and
    the tickets committed since the snapshot (id above W, or in P) with their vectors."""

    known: dict[TicketKey, db.KnownTicket]
    since: list[db.StoredTicket]
    # The tickets caught up so far, decoded and tokenized once, by row id (_caught_up).
    caught: dict[int, CaughtUp] = field(default_factory=dict)

    def holds(self, marks: db.ViewMarks) -> bool:
        """Whether reading the view again would find the same: none of the keys stored
        since, and the same tickets committed since the snapshot. Tickets of a scope are
        committed one section at a time with new ids (a ticket changed moves to a new id),
        so equal id sets are equal rows; a status may have changed (statuses are not
        serialised with decisions, see _route)."""
        return marks.stored == set(self.known) and marks.since == {t.id for t in self.since}

    def added(self, marks: db.ViewMarks) -> list[int] | None:
        """The ids committed in the scope since this view was read, when they are all that
        changed: the same keys stored, and every ticket of the view still at its id. None:
        the view is to be read whole again."""
        had = {t.id for t in self.since}
        if marks.stored != set(self.known) or not had <= marks.since:
            return None
        return sorted(marks.since - had)


@dataclass
class Routed:
    """A part routed on a view: the rows to write, and what to publish after."""

    written: Written
    ticket_rows: list[dict[str, Any]]
    decision_rows: list[dict[str, Any]]
    rerouted: list[TicketKey]
    repaired: int
    caught_up: int
    candidates: Candidates
    bars: dict[int, Bar | None]  # by item index, each decided ticket's ranking's

    # Worked out when first read: a plan's before its section (_checkable); a part routed
    # again inside the section is written, never checked again.
    @cached_property
    def reach(self) -> dict[int, Reach]:
        """What a ticket committed since must score to change each ticket's routing."""
        reach = self.candidates.reach
        return {i: replace(reach[i], bar=bar) for i, bar in self.bars.items() if i in reach}

    @cached_property
    def keys(self) -> set[TicketKey]:
        """The keys it was routed against."""
        return self.candidates.keys


@dataclass
class Plan:
    """A part routed outside the lock, on the view read after its snapshot: written as it
    is if that view still holds inside the lock, routed again on a fresh view otherwise."""

    view: View
    routed: Routed
    # Worked out while waiting, on what the holder handed before its commit: the part
    # routed on this view with those tickets added, if they are what the section finds
    # committed since (worker/handoff.py).
    ahead: Ahead | None = None


@dataclass
class Ahead:
    """A plan's catch-up with tickets handed by the holder before its commit."""

    handed: list[db.StoredTicket]  # ids 0: the commit gives them
    routed: Routed


def _ahead(
    batch: PreparedBatch,
    part: list[int],
    snapshot: Snapshot,
    services: Services,
    plan: Plan,
    handed: list[db.StoredTicket],
) -> Ahead | None:
    """The catch-up the section would do if it finds ``handed`` committed after the plan's
    view, done now. The tickets stand in at ids above the view's (in their order); their
    decoded copies stay out of the view's cache, which is by committed id."""
    keys = {batch.items[i].ticket.key for i in part}
    if any(t.key in keys for t in handed):
        return None  # one of the batch's own keys: the section reads the view whole
    top = max([snapshot.newest, *(t.id for t in plan.view.since)])
    new = [replace(t, id=top + 1 + n) for n, t in enumerate(handed)]
    routed = _caught_up_with(batch, part, snapshot, services, plan, new, dict(plan.view.caught))
    return Ahead(list(handed), routed.routed)


def _since(snapshot: Snapshot, field_: db.ScopeField) -> dict[str, Any]:
    """The catch-up's tickets: the scope's committed above W, or in P."""
    return {
        "after_id": snapshot.newest,
        "ids": snapshot.unindexed,
        "field": field_,
        "value": snapshot.scope,
    }


def _read_view(
    session: Session, keys: list[TicketKey], snapshot: Snapshot, field_: db.ScopeField
) -> View:
    known = db.known_tickets(session, keys)
    return View(known, db.stored_tickets(session, **_since(snapshot, field_)))


def _plan(batch: PreparedBatch, part: list[int], snapshot: Snapshot, services: Services) -> Plan:
    """Step 3b: route the part outside the lock, on the view as it is after the snapshot
    (what was committed while the snapshot ranked is caught up here, not in the section)."""
    keys = [batch.items[i].ticket.key for i in part]
    view = with_session(
        lambda s: _read_view(s, keys, snapshot, services.match_scope), services.engine
    )
    return Plan(view, _checkable(_route(batch, part, snapshot, view, services)))


def _checkable(routed: Routed) -> Routed:
    """A plan's routing with what its section's check reads (:func:`_reached`: what would
    change it, the keys it was ranked against) worked out now, outside the lock."""
    _ = routed.reach, routed.keys
    return routed


def catch_up_offers(
    snapshot: Snapshot, since: list[db.StoredTicket], services: Services
) -> tuple[list[db.StoredTicket], set[TicketKey]]:
    """The tickets caught up that may be offered as matches, and the candidates left out by
    their status.

    TRIAGE_MATCH_STATUSES: the snapshot read the statuses of its candidates, outside the
    lock; the tickets caught up bring theirs. A status is not serialised with decisions (a
    helpdesk closes a ticket whenever it likes), so a ticket closed while its batch-mate
    waits for the lock may still be offered, as one closed a moment after the commit is.
    A match window offers in-window tickets only."""
    statuses = services.match_statuses
    excluded = set(snapshot.excluded)
    if statuses is not None:
        excluded.difference_update(t.key for t in since)
        excluded.update(t.key for t in since if t.status not in statuses)
    if services.window is not None:
        since = [t for t in since if t.received_at is None or services.window.admits(t.received_at)]
    return since, excluded


def _route(
    batch: PreparedBatch,
    part: list[int],
    snapshot: Snapshot,
    view: View,
    services: Services,
    plan: Routed | None = None,
    redo: set[int] | None = None,
) -> Routed:
    """Catch up and decide the part on ``view``, in order: the rows to write.

    ``plan``: the part routed before on a view with the same known keys, whose outcomes
    are kept except for the tickets in ``redo`` (and those that ranked one whose route
    changed; :func:`decide`)."""
    items, texts, vectors = batch.items, batch.texts, batch.vectors
    known = view.known
    since, excluded = catch_up_offers(snapshot, view.since, services)
    model = services.embedder.model_id
    results: dict[int, ItemResult] = {}

    repair = [i for i in part if _settled(items[i], known.get(items[i].ticket.key))]
    fresh = [i for i in part if i not in repair]
    fresh_keys = [items[i].ticket.key for i in fresh]
    to_route = [items[i].mode == "route" for i in fresh]
    fresh_vectors = _stack([vectors[i] for i in fresh], services)

    caught_up = _caught_up(since, services.embedder.dimension, view.caught)
    # Read per ticket as decide() asks: routed again from a plan, only the tickets decided
    # again have their candidates worked out.
    found = _candidates(
        items, fresh, snapshot, caught_up, fresh_vectors, to_route, services, excluded
    )
    thresholds = [services.thresholds.for_queue(items[i].ticket.queue) for i in fresh]
    reasons = [snapshot.reasons[i] for i in fresh]
    outcomes = decide(
        fresh_keys,
        fresh_vectors,
        found.stored,
        decide_mask=to_route,
        thresholds=thresholds,
        top_k=services.top_k,
        unreadable=reasons,
        lexical=found.lexical,
        alpha=services.hybrid_alpha,
        pool=services.hybrid_pool,
        offered=None
        if services.window is None
        else [services.window.admits(items[i].ticket.received_at) for i in fresh],
        planned=None if plan is None else [_planned(plan, i) for i in fresh],
        redo=None if plan is None else [i in (redo or ()) for i in fresh],
    )
    # A kept outcome keeps its row (re-stamped at the commit).
    planned_rows = (
        {} if plan is None else {(r["source"], r["ticket_id"]): r for r in plan.decision_rows}
    )

    now = datetime.now(UTC)
    ticket_rows, decision_rows = [], []
    rerouted = [items[i].ticket.key for i in fresh if items[i].ticket.key in known]
    out = Written(results, [], [], [], {})
    for n, (i, outcome) in enumerate(zip(fresh, outcomes, strict=True)):
        ticket = items[i].ticket
        readable = reasons[n] is None
        ticket_rows.append(
            plan.ticket_rows[n]  # the same fresh tickets, in order (the same keys known)
            if plan is not None
            else db.ticket_values(
                ticket,
                content_hash=content_hash(texts[i]),
                backfill=outcome is None,
                model=model,
                vector=encode_vector(vectors[i]),
                readable=readable,
            )
        )
        if outcome is None:
            meta = vector_meta(ticket.key, ticket.key, "history", readable, ticket.queue)
            results[i] = ItemResult("stored")
        else:
            kept_row = plan is not None and outcome is _planned(plan, i)
            decision_rows.append(
                planned_rows[(ticket.source, ticket.ticket_id)]
                if kept_row
                else _decision_values(
                    ticket, outcome, model, thresholds[n], now, snapshot.ratios[i]
                )
            )
            meta = vector_meta(ticket.key, outcome.canonical, outcome.route, readable, ticket.queue)
            results[i] = ItemResult(outcome.route, outcome)
        out.keys.append(ticket.key)
        out.vectors.append(vectors[i])
        out.metas.append(meta)
    for i in repair:
        key = items[i].ticket.key
        k = known[key]
        results[i] = ItemResult("unchanged", _outcome_of(k))
        if k.indexed and k.vector is not None:
            continue  # decided by another worker meanwhile, its vector stored
        kept = _kept_vector(k, services.embedder.dimension)
        out.keys.append(key)
        out.vectors.append(vectors[i] if kept is None else kept)
        out.metas.append(_known_meta(key, k))
        if k.vector is None:
            out.fill[key] = encode_vector(vectors[i])

    return Routed(
        out,
        ticket_rows,
        decision_rows,
        rerouted,
        len(repair),
        len(caught_up),
        found,
        {i: o.bar for i, o in zip(fresh, outcomes, strict=True) if o is not None},
    )


def route_one(
    ticket: Ticket,
    text: str,
    vector: np.ndarray,
    services: Services,
    *,
    leave_out: Callable[[Neighbour], bool] = lambda nb: False,
) -> tuple[Outcome, dict[str, Any]]:
    """Route one ticket (its ``text`` and ``vector``) against every ticket stored in its
    match scope now, as a batch of one would be (the snapshot, the catch-up from SQL, the
    ranking), without writing anything: its outcome and its decision row's values. The
    caller holds the scope's decision section, so nothing is committed in it meanwhile.
    ``leave_out``: candidates never offered (worker/redecide.py: the tickets linked to it)."""
    batch = PreparedBatch([WorkItem(ticket)], {}, {ticket.key: 0}, [0], {0: text}, {0: vector})
    snapshot = _snapshot(batch, [0], scope_of(ticket, services.match_scope), services)
    committed = with_session(
        lambda s: db.stored_tickets(s, **_since(snapshot, services.match_scope)), services.engine
    )
    since, excluded = catch_up_offers(snapshot, committed, services)
    vectors = _stack([vector], services)
    found = _candidates(
        batch.items,
        [0],
        snapshot,
        _caught_up(since, services.embedder.dimension),
        vectors,
        [True],
        services,
    )
    excluded.update(nb.key for nb in found.stored[0] if leave_out(nb))
    scores = None
    if found.lexical is not None:
        scores = [{k: v for k, v in found.lexical[0].items() if k not in excluded}]
    thresholds = services.thresholds.for_queue(ticket.queue)
    outcome = decide(
        [ticket.key],
        vectors,
        [[nb for nb in found.stored[0] if nb.key not in excluded]],
        decide_mask=[True],
        thresholds=[thresholds],
        top_k=services.top_k,
        unreadable=[snapshot.reasons[0]],
        lexical=scores,
        alpha=services.hybrid_alpha,
        pool=services.hybrid_pool,
    )[0]
    assert outcome is not None
    now = datetime.now(UTC)
    model = services.embedder.model_id
    return outcome, _decision_values(ticket, outcome, model, thresholds, now, snapshot.ratios[0])


def _section(
    batch: PreparedBatch,
    part: list[int],
    snapshot: Snapshot,
    services: Services,
    section: Section | None,
    plan: Plan,
    session: Session,
) -> tuple[Written, int, bool]:
    """Step 3c, under the lock: the plan if its view still holds (one light query says),
    else catch up and decide again; then the write. Returns what to publish, how many
    tickets were caught up, and whether it caught up inside the lock (not when its view
    held, nor when it had caught up while waiting with what it found committed: rows the
    holder before handed, worker/handoff.py).

    One session from the view's check to the commit: every statement reads what was
    committed before it (PostgreSQL's READ COMMITTED; SQLite's transaction begins at the
    first write), and the section uses one connection instead of one per step."""
    keys = [batch.items[i].ticket.key for i in part]
    followed = _follow(session, batch, part, snapshot, services, plan)
    routed = followed.routed
    _stamp(routed, datetime.now(UTC))
    if section is not None and not routed.rerouted:
        # The next waiter catches up with these rows while this section writes them.
        tickets, decisions = list(routed.ticket_rows), list(routed.decision_rows)
        section.hand(lambda: handoff.encode(handoff.stored_rows(tickets, decisions)))
    if services.hooks.in_section is not None:
        services.hooks.in_section(keys)
    # Fenced: if this section's lock was lost and another holder decided meanwhile,
    # nothing is written and the batch is retried on a fresh view (DecisionLockLost,
    # transient).
    with section.committing() if section is not None else contextlib.nullcontext() as check:
        purged = _write(session, routed, keys, snapshot.collection, services, check)
    out = routed.written
    if purged:
        _drop_purged(out, purged, services)
    logger.info(
        "batch of %d: %d decided, %d history, %d repaired",
        len(part),
        len(routed.decision_rows),
        len(routed.ticket_rows) - len(routed.decision_rows),
        routed.repaired,
    )
    return out, routed.caught_up, followed is not plan and followed.ahead is None


def _follow(
    session: Session,
    batch: PreparedBatch,
    part: list[int],
    snapshot: Snapshot,
    services: Services,
    plan: Plan,
) -> Plan:
    """The plan if its view still holds; else the batch routed again on the view with what
    was committed since, only where that could change a ticket's candidates."""
    keys = [batch.items[i].ticket.key for i in part]
    field_ = services.match_scope
    # The tickets committed after the view was read come whole with the check: a scope's
    # ids are taken in commit order, so those are the ids above the view's last.
    read_after = max([snapshot.newest, *(t.id for t in plan.view.since)])
    marks = db.view_marks(session, keys, **_since(snapshot, field_), read_after=read_after)
    if plan.view.holds(marks):
        return plan
    # Another worker committed in the scope since the plan's view was read: route again
    # on the view with those tickets added (read alone), or read whole when more changed
    # (one of the batch's own keys stored, a ticket moved to a new id). When none of those
    # would change any ticket's candidates, the plan's routing stands.
    added = plan.view.added(marks)
    if added is not None:
        if all(id_ in marks.rows for id_ in added):
            new = [marks.rows[id_] for id_ in added]
        else:  # one below the view's last id: not read with the check
            new = db.stored_tickets(session, ids=added, field=field_, value=snapshot.scope)
        if not {t.key for t in new} & set(keys):
            ahead = plan.ahead
            if ahead is not None and handoff.same(ahead.handed, new):
                # Those are the tickets the holder handed: caught up with while waiting.
                since = sorted(plan.view.since + new, key=lambda t: t.id)
                return Plan(View(plan.view.known, since, plan.view.caught), ahead.routed, ahead)
            return _caught_up_with(batch, part, snapshot, services, plan, new, plan.view.caught)
    view = _read_view(session, keys, snapshot, field_)
    return Plan(view, _route(batch, part, snapshot, view, services))


def _caught_up_with(
    batch: PreparedBatch,
    part: list[int],
    snapshot: Snapshot,
    services: Services,
    plan: Plan,
    new: list[db.StoredTicket],
    caught: dict[int, CaughtUp],
) -> Plan:
    """The plan on its view with ``new`` (committed after it) added: routed again where
    they could change a ticket's candidates."""
    since = sorted(plan.view.since + new, key=lambda t: t.id)
    view = View(plan.view.known, since, caught)
    reached = _reached(batch, plan.routed, view, new, snapshot, services)
    if reached is not None:
        # Only the tickets whose candidates changed are routed again (and those after
        # them that ranked one whose route or canonical ticket changed).
        if not reached:
            return Plan(view, plan.routed)
        return Plan(view, _route(batch, part, snapshot, view, services, plan.routed, reached))
    return Plan(view, _route(batch, part, snapshot, view, services))


def _replanned(
    batch: PreparedBatch, part: list[int], snapshot: Snapshot, services: Services, plan: Plan
) -> Plan:
    """While the part waits for the lock and another holder has come and gone: the plan
    brought up to date with what was committed since its view was read, outside the lock.
    With several workers queued for one scope, the section then catches up with the last
    holder's batch only, not with every batch committed since the snapshot."""

    def run(session: Session) -> Plan:
        new = _follow(session, batch, part, snapshot, services, plan)
        if new is plan:  # its view holds: kept with what it worked out ahead, if anything
            return plan
        routed = new.routed
        if new.view is not plan.view and routed is plan.routed:
            # Kept whole on a view with more tickets: its candidates are listed again.
            routed = _route(batch, part, snapshot, new.view, services, plan.routed, set())
        return Plan(new.view, _checkable(routed))

    return with_session(run, services.engine)  # type: ignore[no-any-return]


def _write(
    session: Session,
    routed: Routed,
    keys: list[TicketKey],
    collection: str,
    services: Services,
    check: FenceCheck | None,
) -> set[TicketKey]:
    """The section's commit: fenced, on the collection the batch was ranked on, with the
    purges committed before it honoured. Returns the keys stored without text (purged)."""
    # The purge lock, held shared from here to the commit (taken by the fence check's
    # statement when there is one): every tombstone committed before is read below; a
    # purge that commits later waits for this commit and then erases what it wrote.
    if check is not None:
        check(session, shared_lock=purge_sql.shared_lock(session))
    else:
        purge_sql.hold_shared(session)
    found = db.write_marks(session, keys, tombstones=purge_sql.tombstoned(keys))
    if check is not None and found.active is not None and found.active != collection:
        raise CollectionSwitched(
            f"the active collection is now {found.active!r}, this batch was ranked on "
            f"{collection!r}: retried"
        )
    db.save_batch(
        session, routed.ticket_rows, routed.decision_rows, routed.rerouted, failed=found.failed
    )
    if services.outbox is not None:  # the decisions' actions, in the same transaction
        services.outbox.stage(session, routed.decision_rows)
    if found.tombstoned:  # purged meanwhile (queued, or in this batch): kept without text
        purge_sql.erase(session, list(found.tombstoned))
    session.commit()
    return found.tombstoned


def _planned(plan: Routed, i: int) -> Outcome | None:
    result = plan.written.results.get(i)
    return None if result is None else result.outcome


def _stamp(routed: Routed, now: datetime) -> None:
    """The write's own time on its rows (the plan was routed before the lock was waited
    for): a decision's latency runs to its commit, and a row's ``stored_at`` (which tells
    when an unindexed vector is stale, _repair_stale) is not older than the row."""
    for row in routed.ticket_rows:
        row["stored_at"] = now
    for row in routed.decision_rows:
        row["decided_at"] = now
        row["latency_ms"] = _latency_ms(row["received_at"], now)


def _ranked_keys(r: Ranked) -> list[TicketKey]:
    return [nb.key for nb in r.dense] + list(r.lexical_top) + list(r.lexical_only)


@dataclass(frozen=True)
class CaughtUp:
    ticket: db.StoredTicket
    vector: np.ndarray | None

    @cached_property
    def document(self) -> Document:
        """Its text as BM25 reads it, tokenized once however often it is scored (a plan,
        then its section)."""
        t = self.ticket
        return Document.of(lexical_text(t.subject, t.body, t.body_format))


@dataclass(frozen=True)
class Reach:
    """What a ticket committed later must score to change one ticket's routing.

    To be listed among its candidates (:func:`_candidates`): a cosine of at least the last
    of its dense list (``dense``; ``-inf`` when the list is not full), which it then pushes
    out (``last``), or a BM25 score above 0 and at least the last of its BM25 pool
    (``lexical``; ``0`` when not full). Listed by cosine, it changes the ranking only if it
    clears the ranking's :class:`Bar` (``bar``, set once routed) or pushes out a ranked one."""

    dense: float
    lexical: float
    last: TicketKey | None
    bar: Bar | None = None


@dataclass(frozen=True)
class Listed:
    """One fresh ticket's candidates (:func:`_candidates`): its dense list with the BM25
    pool's joined, its BM25 scores, what would change them (None: not routed on a
    snapshot), and the keys it was ranked against."""

    dense: list[Neighbour]
    scores: dict[TicketKey, float]
    reach: Reach | None
    ranked: set[TicketKey]


class Lazy(Sequence[_T]):
    """A sequence whose items are worked out when first read, once."""

    def __init__(self, count: int, get: Callable[[int], _T]) -> None:
        self._count, self._get = count, get
        self._done: dict[int, _T] = {}

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> _T: ...
    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...
    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        if isinstance(index, slice):
            return [self[n] for n in range(self._count)[index]]
        n = range(self._count)[index]  # IndexError past the end, as a list
        if n not in self._done:
            self._done[n] = self._get(n)
        return self._done[n]


class Candidates:
    """Each fresh ticket's candidates (:func:`_candidates`), without those ``excluded``,
    and what would change them. Worked out per ticket when first read: a batch routed again
    in its section reads those of the tickets it decides again only."""

    def __init__(
        self,
        fresh: list[int],
        listed: Callable[[int], Listed],
        *,
        hybrid: bool,
        caught: set[TicketKey],
        excluded: set[TicketKey],
    ) -> None:
        self._fresh, self._caught = fresh, caught
        # The accessors close over the lists, not over self: no reference cycle, so a
        # batch's candidates are freed when it is done, not left to a full collection.
        self._listed = each = Lazy(len(fresh), listed)

        def stored(n: int) -> list[Neighbour]:
            return [nb for nb in each[n].dense if nb.key not in excluded]

        def lexical(n: int) -> dict[TicketKey, float]:
            return {k: v for k, v in each[n].scores.items() if k not in excluded}

        self.stored: Sequence[list[Neighbour]] = Lazy(len(fresh), stored)
        self.lexical: Sequence[dict[TicketKey, float]] | None = (
            Lazy(len(fresh), lexical) if hybrid else None
        )

    @property
    def reach(self) -> dict[int, Reach]:
        """By item index, what would change each routed ticket's candidates (reads every
        ticket's)."""
        listed = ((i, self._listed[n].reach) for n, i in enumerate(self._fresh))
        return {i: r for i, r in listed if r is not None}

    @property
    def keys(self) -> set[TicketKey]:
        """Every key any of them was ranked against (reads every ticket's)."""
        return self._caught.union(*(self._listed[n].ranked for n in range(len(self._fresh))))


def _caught_up(
    since: list[db.StoredTicket], dimension: int, seen: dict[int, CaughtUp] | None = None
) -> list[CaughtUp]:
    """The tickets caught up, decoded; ``seen`` keeps them by row id (a ticket changed moves
    to a new id) for the next routing of the same batch."""
    if seen is None:
        return [CaughtUp(t, decode_vector(t.vector, dimension)) for t in since]
    for t in since:
        if t.id not in seen:
            seen[t.id] = CaughtUp(t, decode_vector(t.vector, dimension))
    return [seen[t.id] for t in since]


def _candidates(
    items: Sequence[WorkItem],
    fresh: list[int],
    snapshot: Snapshot,
    caught_up: list[CaughtUp],
    fresh_vectors: Vectors,
    to_route: list[bool],
    services: Services,
    excluded: set[TicketKey] | None = None,
) -> Candidates:
    """Each fresh ticket's candidates: the snapshot's, merged with the tickets caught up.

    As if the caught-up tickets had been in the store and the BM25 index when the
    snapshot was taken: the dense list is the ``depth`` best by cosine of both, the BM25
    pool the ``pool`` best by score of both; a caught-up ticket's vector and metadata (its
    decision) are SQL's, and replace the store's where both have it. BM25 scores of the
    caught-up tickets use the index's statistics as they are now. ``excluded`` are left
    out of what is read (after what would change the lists is worked out).
    """
    hybrid = services.lexical is not None
    fresh_keys = {items[i].ticket.key for i in fresh}
    with_vector = [c for c in caught_up if c.vector is not None]
    if with_vector:
        matrix = np.stack([c.vector for c in with_vector if c.vector is not None])
        cosines = matrix @ fresh_vectors.T  # (caught up, fresh)
    documents = [c.document for c in with_vector] if hybrid else []
    # BM25 of every caught-up ticket for every routed ticket, in one product.
    routed = [i for n, i in enumerate(fresh) if to_route[n] and i in snapshot.ranked]
    bm25 = (
        services.lexical.score_matrix([snapshot.queries[i] for i in routed], documents)
        if services.lexical is not None and documents
        else None
    )
    row = {i: k for k, i in enumerate(routed)}

    def listed(n: int) -> Listed:
        i = fresh[n]
        if not to_route[n] or i not in snapshot.ranked:
            return Listed([], {}, None, set())
        r = snapshot.ranked[i]
        ranked = {*_ranked_keys(r), *r.lexical_known}
        key = items[i].ticket.key
        extra = {
            c.ticket.key: Neighbour(
                c.ticket.key,
                float(cosines[m, n]),
                c.ticket.canonical,
                c.ticket.route,
                c.ticket.readable,
            )
            for m, c in enumerate(with_vector)
            if c.ticket.key != key
        }
        dense = [nb for nb in r.dense if nb.key not in extra] + list(extra.values())
        dense.sort(key=lambda nb: -nb.score)
        dense = dense[: snapshot.depth]
        full = len(dense) == snapshot.depth
        reach = (
            Reach(dense[-1].score, np.inf, dense[-1].key) if full else Reach(-np.inf, np.inf, None)
        )
        if not hybrid:
            return Listed(dense, {}, reach, ranked)
        scores = dict(r.lexical_known)
        pool = dict(r.lexical_top)
        if extra and bm25 is not None:
            for c, score in zip(with_vector, bm25[row[i]].tolist(), strict=True):
                if c.ticket.key in extra:
                    scores[c.ticket.key] = score
                    pool.pop(c.ticket.key, None)
                    if score > 0:
                        pool[c.ticket.key] = score
        top = sorted(pool, key=lambda k: -pool[k])[: services.hybrid_pool]
        full = len(top) == services.hybrid_pool
        reach = replace(reach, lexical=pool[top[-1]] if full and top else 0.0)
        in_dense = {nb.key for nb in dense}
        for k in top:
            scores.setdefault(k, pool[k])
            if k in in_dense or k in fresh_keys:
                continue
            nb = extra.get(k) or r.lexical_only.get(k)
            if nb is not None:  # a candidate without a vector anywhere is skipped
                dense.append(nb)
        return Listed(dense, scores, reach, ranked)

    return Candidates(
        fresh,
        listed,
        hybrid=hybrid,
        caught={c.ticket.key for c in caught_up},
        excluded=excluded or set(),
    )


def _reached(
    batch: PreparedBatch,
    routed: Routed,
    view: View,
    new: list[db.StoredTicket],
    snapshot: Snapshot,
    services: Services,
) -> set[int] | None:
    """The tickets of a plan whose routing the tickets committed after its view could
    change: those whose candidates they would change in a way the ranking reads
    (:class:`Reach`). Routing again on the view with them added ranks every other ticket's
    same candidates the same (their BM25 scores taken under the index's statistics now).
    None: any ticket's (one of them is among the candidates already: moved to a new id)."""
    if any(t.key in routed.keys for t in new):
        return None
    offered, excluded = catch_up_offers(snapshot, new, services)
    caught_up = [
        c
        for c in _caught_up(offered, services.embedder.dimension, view.caught)
        if c.vector is not None and c.ticket.key not in excluded
    ]
    rows = list(routed.reach)
    if not caught_up or not rows:
        return set()
    reach = [routed.reach[i] for i in rows]
    cosines = (
        _stack([batch.vectors[i] for i in rows], services)
        @ np.stack([c.vector for c in caught_up if c.vector is not None]).T
    )  # (routed, caught up)
    bm25 = np.zeros_like(cosines, dtype=np.float64)
    if services.lexical is not None:
        documents = [c.document for c in caught_up]
        bm25 = services.lexical.score_matrix([snapshot.queries[i] for i in rows], documents)

    def column(values: list[float]) -> np.ndarray:
        return np.array(values, dtype=np.float64)[:, None]

    # Into the BM25 pool, pushing its last out: taken as a change.
    pooled = ((bm25 > 0) & (bm25 >= column([r.lexical for r in reach]))).any(axis=1)
    # Into the dense list: a change if it ranks, or if the one it pushes out was ranked (or
    # the ticket has no bar); two pushing out two are taken as a change.
    listed = cosines >= column([r.dense for r in reach])
    bars = [r.bar or Bar(-np.inf, 0.0, frozenset()) for r in reach]
    ranks = (cosines >= column([b.dense for b in bars])) | (
        (bm25 > 0) & (bm25 >= column([b.lexical for b in bars]))
    )
    pushes = np.array([r.bar is None or r.last in r.bar.ranked for r in reach])[:, None]
    hit = pooled | (listed.sum(axis=1) > 1) | (listed & (ranks | pushes)).any(axis=1)
    return {i for i, h in zip(rows, hit.tolist(), strict=True) if h}


def _repair_stale(
    unindexed: list[tuple[int, datetime]], services: Services
) -> list[tuple[int, datetime]]:
    """Re-store from SQL the vectors that have not reached the store for longer than
    ``repair_after_s`` (a worker died, or the store failed, between commit and upsert);
    returns the others, still unindexed."""
    cutoff = datetime.now(UTC) - timedelta(seconds=services.repair_after_s)
    stale = [id_ for id_, at in unindexed if _aware(at) <= cutoff]
    if not stale:
        return unindexed
    rows = with_session(lambda s: db.stored_tickets(s, ids=stale), services.engine)
    dim = services.embedder.dimension
    keep = [(t, v) for t in rows if (v := decode_vector(t.vector, dim)) is not None]
    if keep:
        services.store.upsert(
            [t.key for t, _ in keep],
            np.stack([v for _, v in keep]),
            [vector_meta(t.key, t.canonical, t.route, t.readable, t.queue) for t, _ in keep],
        )
        keys = [t.key for t, _ in keep]
        with_session(
            lambda s: db.mark_indexed(s, keys, datetime.now(UTC)), services.engine, commit=True
        )
        logger.warning("re-stored %d vectors left unindexed by an interrupted batch", len(keep))
    done = {t.id for t, _ in keep}
    return [(id_, at) for id_, at in unindexed if id_ not in done]


def _aware(at: datetime) -> datetime:
    # SQLite gives naive datetimes back (stored in UTC).
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _publish(written: Written, store: VectorStore, services: Services) -> None:
    """Step 3d, after the lock: the vectors into the store, then ``indexed_at`` in SQL."""
    if not written.keys:
        return
    store.upsert(written.keys, np.stack(written.vectors).astype(np.float32), written.metas)

    def mark(session: Session) -> set[TicketKey]:
        db.keep_vectors(session, written.fill, only_missing=True)
        db.mark_indexed(session, written.keys, datetime.now(UTC))
        # A purge committed between the decision and here: its vectors leave the store.
        return purge_sql.guard(session, written.keys)

    purged = with_session(mark, services.engine, commit=True)
    if purged:
        store.delete(list(purged))
        forget_purged(services, list(purged))


def _drop_purged(out: Written, purged: set[TicketKey], services: Services) -> None:
    """Tickets purged before their batch committed: their decision stands (without
    text), their vectors are not published, this process forgets their text."""
    keep = [n for n, key in enumerate(out.keys) if key not in purged]
    out.keys[:] = [out.keys[n] for n in keep]
    out.vectors[:] = [out.vectors[n] for n in keep]
    out.metas[:] = [out.metas[n] for n in keep]
    for key in purged:
        out.fill.pop(key, None)
    forget_purged(services, list(purged))


def forget_purged(services: Services, keys: Sequence[TicketKey]) -> None:
    """Drop purged keys from this process's memory: the lexical index, the store's fetch
    cache, and every cached vector (the vector cache is keyed by text no longer known)."""
    if services.lexical is not None:
        services.lexical.forget(keys)
    services.store.forget(keys)
    if services.vector_cache is not None:
        services.vector_cache.clear()


def lexical_scores(
    index: LexicalIndex,
    text: str,
    known: set[TicketKey],
    pool: int,
    *,
    exclude: TicketKey | None = None,
) -> tuple[dict[TicketKey, float], list[TicketKey]]:
    """BM25 of one query's candidates: those ``known`` (from the dense side) and the
    ``pool`` best by BM25; and the latter that are not known (they need their vector)."""
    scores = index.scores(text)
    top = [index.keys[p] for p in index.top(scores, pool, exclude=exclude)]
    by_key = {
        key: float(scores[pos])
        for key in known.union(top)
        if (pos := index.position(key)) is not None
    }
    return by_key, [key for key in top if key not in known]


def add_lexical_only(
    store: VectorStore,
    wanted: dict[int, list[TicketKey]],
    vectors: Vectors,
    stored: list[list[Neighbour]],
) -> None:
    """Candidates found by BM25 alone join query n's ``stored`` with their cosine to
    ``vectors[n]``, from their stored vectors (one call); one without a vector is skipped."""
    fetched = store.fetch(list(dict.fromkeys(k for ks in wanted.values() for k in ks)))
    for n, keys in wanted.items():
        for key in keys:
            if key in fetched:
                vector, neighbour = fetched[key]
                stored[n].append(replace(neighbour, score=float(vector @ vectors[n])))


def vector_meta(
    key: TicketKey,
    canonical: TicketKey,
    route: str,
    readable: bool = True,
    queue: str | None = None,
) -> dict[str, Any]:
    """What the store keeps beside a vector: its decision, and its match scopes' values
    (``source``, and ``queue``: "" for none, as Chroma metadata has no null)."""
    return {
        "source": key.source,
        "ticket_id": key.ticket_id,
        "canonical_source": canonical.source,
        "canonical_ticket_id": canonical.ticket_id,
        "route": route,
        "readable": readable,
        "queue": _meta_scope(queue),
    }


def _decision_values(
    ticket: Ticket,
    outcome: Outcome,
    model: str,
    thresholds: Thresholds,
    now: datetime,
    unknown_ratio: float | None = None,
) -> dict[str, Any]:
    best = outcome.best
    return {
        "source": ticket.source,
        "ticket_id": ticket.ticket_id,
        "route": outcome.route,
        "score": None if outcome.score is None else round(outcome.score, 6),
        "matched_source": best.key.source if best else None,
        "matched_ticket_id": best.key.ticket_id if best else None,
        "canonical_source": outcome.canonical.source,
        "canonical_ticket_id": outcome.canonical.ticket_id,
        "matches": [_match_values(m) for m in outcome.matches],
        "ranked_by": outcome.ranked_by,
        "fused_score": None if best is None or best.fused is None else round(best.fused, 6),
        "model": model,
        "duplicate_threshold": thresholds.duplicate,
        "suggest_threshold": thresholds.suggest,
        "queue": ticket.queue,
        "subject": ticket.subject,
        "received_at": ticket.received_at,
        "decided_at": now,
        "latency_ms": _latency_ms(ticket.received_at, now),
        "unknown_ratio": None if unknown_ratio is None else round(unknown_ratio, 4),
        "reason": outcome.reason,
    }


def _latency_ms(received_at: datetime, now: datetime) -> int:
    return max(0, round((now - received_at).total_seconds() * 1000))


def _match_values(m: Neighbour) -> dict[str, Any]:
    values: dict[str, Any] = {
        "source": m.key.source,
        "ticket_id": m.key.ticket_id,
        "score": round(m.score, 6),
    }
    if m.fused is not None:
        values["fused_score"] = round(m.fused, 6)
    return values


@contextlib.contextmanager
def session_of(engine: Engine, *, checked_out: bool = False) -> Iterator[Session]:
    """A session in which a database outage becomes a retryable StoreUnavailable;
    ``checked_out``: with its connection taken from the pool (and pinged) now."""
    try:
        with Session(engine, expire_on_commit=False) as session:
            if checked_out:
                session.connection()
            yield session
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"database error: {exc.__class__.__name__}: {exc}") from exc


def with_session(fn: Callable[[Session], Any], engine: Engine, *, commit: bool = False) -> Any:
    """Run fn in a session (:func:`session_of`)."""
    with session_of(engine) as session:
        result = fn(session)
        if commit:
            session.commit()
        return result
