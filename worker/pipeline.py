"""One batch of tickets, from text to decision rows: the triage domain, with no Celery in it.

Follow one ticket through :func:`triage_batch`:

1. **Look up** what SQL already knows of each key. A ticket decided before (a redelivery or
   a re-import) is never decided again and never matched against itself; it only gets
   its vector re-stored if a crash lost it between the two writes.
2. **Embed** every ticket that needs a vector in ONE embedder call. If the embedder
   rejects the batch as a whole (one poison input), each ticket is embedded alone so that
   only the poison one fails and its batch-mates go on.
3. **Critical section** (one batch at a time across all workers; see ``Services.lock``):
   query the store for each ticket's neighbours (one query for the batch), route in
   order (:func:`worker.routing.decide`), write ticket and decision rows in one SQL
   transaction, then upsert the vectors (one call). SQL first: a crash between the writes
   leaves a decision without a vector, which step 1 repairs on redelivery, never a vector
   without a decision (a phantom that later tickets could match).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tickets import db
from tickets.errors import EmbeddingRejected, PermanentError, StoreUnavailable, TriageError
from tickets.model import Ticket, TicketKey
from worker.embedding import Embedder, Vectors
from worker.hybrid import DEFAULT_ALPHA, DEFAULT_POOL
from worker.lexical import LexicalIndex, lexical_text
from worker.routing import Outcome, Thresholds, decide
from worker.store import Neighbour, VectorStore
from worker.text import DEFAULT_SUBJECT_WEIGHT, content_hash, embed_tickets, embedding_text

if TYPE_CHECKING:
    from actions.outbox import Outbox
    from worker.coverage import CoverageGuard
    from worker.decision_lock import Section

logger = logging.getLogger(__name__)

Mode = Literal["route", "backfill"]
# The Redis lock that serialises critical sections across worker processes (and `triage
# reindex`'s switch-over) when they share a Chroma server.
DECISION_LOCK = "triage:decide"


class ThresholdSource(Protocol):
    """Thresholds for a ticket's queue: a single Thresholds, or a calibrated ThresholdTable."""

    def for_queue(self, queue: str | None) -> Thresholds: ...


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
class Services:
    """Everything a batch needs, created once per worker process and passed in."""

    embedder: Embedder
    store: VectorStore
    engine: Engine
    thresholds: ThresholdSource
    top_k: int
    # Serialises the critical section across worker processes when several share a Chroma
    # server (worker/decision_lock.py: a Redis lock and a SQL fence; it yields the section
    # whose commit is fenced); a no-op yielding None when one process owns the embedded store.
    lock: Callable[[], AbstractContextManager[Section | None]] = field(
        default=contextlib.nullcontext
    )
    # Weight of the subject's own vector in a ticket's vector (worker/text.embed_tickets).
    subject_weight: float = DEFAULT_SUBJECT_WEIGHT
    # Language-coverage guard (worker/coverage.py); None when the model has no tokenizer here.
    coverage: CoverageGuard | None = None
    # Called inside the critical section before the store is read: lets a worker sharing a
    # Chroma server follow a `triage reindex` switch (worker/runtime.py).
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
    # The outbox (actions/outbox.py): a decision's actions are inserted in its transaction;
    # None: decisions cause nothing outside.
    outbox: Outbox | None = None


def triage_batch(items: Sequence[WorkItem], services: Services) -> list[ItemResult]:
    """Triage a batch; return one ItemResult per item, in order.

    Raises a TransientError (embedder down, store or database unreachable) for the whole
    batch: nothing was written then, or only idempotent writes, so the caller retries.
    """
    return finish_batch(prepare_batch(items, services), services)


@dataclass
class PreparedBatch:
    """A batch after steps 1-2 (lookup, embedding), waiting for its critical section."""

    items: Sequence[WorkItem]
    results: dict[int, ItemResult]
    first_of: dict[TicketKey, int]
    todo: list[int]
    texts: dict[int, str]
    vectors: dict[int, np.ndarray]


def prepare_batch(items: Sequence[WorkItem], services: Services) -> PreparedBatch:
    """Steps 1-2, outside the lock: the worker's batcher runs them for the next batch while
    the previous one is in its critical section (the model and the stores overlap)."""
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
    known = _sql(lambda s: db.known_tickets(s, keys), services.engine)

    # Which tickets need a vector now.
    needs_vector: list[int] = []
    already_stored: set[TicketKey] = set()
    settled = [i for i in unique if _settled(items[i], known.get(items[i].ticket.key))]
    if settled:
        already_stored = services.store.present([items[i].ticket.key for i in settled])
    for i in unique:
        key = items[i].ticket.key
        if i in settled and key in already_stored:
            results[i] = ItemResult("unchanged", _outcome_of(known[key]))
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
    return PreparedBatch(items, results, first_of, todo, texts, vectors)


def finish_batch(batch: PreparedBatch, services: Services) -> list[ItemResult]:
    """Step 3: the critical section, then one result per item, in order."""
    items, results = batch.items, batch.results
    if batch.todo:
        with services.local_lock, services.lock() as section:
            if services.before_decide is not None:
                services.before_decide()
            results.update(
                _decide_and_store(items, batch.todo, batch.texts, batch.vectors, services, section)
            )

    for i, item in enumerate(items):
        if i not in results:  # a repeated key: same result as its first occurrence
            results[i] = results[batch.first_of[item.ticket.key]]
    return [results[i] for i in range(len(items))]


def _settled(item: WorkItem, known: db.KnownTicket | None) -> bool:
    """Nothing left to decide: routed before, or history already stored."""
    if known is None:
        return False
    return known.decision is not None or (item.mode == "backfill")


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


def _decide_and_store(
    items: Sequence[WorkItem],
    todo: list[int],
    texts: dict[int, str],
    vectors: dict[int, np.ndarray],
    services: Services,
    section: Section | None = None,
) -> dict[int, ItemResult]:
    keys = [items[i].ticket.key for i in todo]
    # Re-read inside the lock: another worker may have decided one of these meanwhile.
    known = _sql(lambda s: db.known_tickets(s, keys), services.engine)
    model = services.embedder.model_id
    results: dict[int, ItemResult] = {}

    repair = [i for i in todo if _settled(items[i], known.get(items[i].ticket.key))]
    fresh = [i for i in todo if i not in repair]

    to_route = [items[i].mode == "route" for i in fresh]
    fresh_keys = [items[i].ticket.key for i in fresh]
    fresh_vectors: Vectors = (
        np.stack([vectors[i] for i in fresh]).astype(np.float32)
        if fresh
        else np.zeros((0, services.embedder.dimension), np.float32)
    )
    routed_vectors = fresh_vectors[np.asarray(to_route, dtype=bool)] if fresh else fresh_vectors
    # +1: a ticket stored as history and now routed finds itself first; it is skipped.
    depth = services.top_k + 1
    if services.lexical is not None:
        depth = max(depth, services.hybrid_pool + 1)
    stored_iter = iter(services.store.query(routed_vectors, depth))
    stored = [next(stored_iter) if r else [] for r in to_route]
    lexical = None
    if services.lexical is not None:
        lexical = _lexical_side(items, fresh, to_route, fresh_vectors, stored, services)
    thresholds = [services.thresholds.for_queue(items[i].ticket.queue) for i in fresh]
    ratios: list[float | None] = [None] * len(fresh)
    reasons: list[str | None] = [None] * len(fresh)
    if services.coverage is not None and fresh:
        ratios = list(services.coverage.unknown_ratios([texts[i] for i in fresh]))
        reasons = [services.coverage.reason(r) if r is not None else None for r in ratios]
    outcomes = decide(
        fresh_keys,
        fresh_vectors,
        stored,
        decide_mask=to_route,
        thresholds=thresholds,
        top_k=services.top_k,
        unreadable=reasons,
        lexical=lexical,
        alpha=services.hybrid_alpha,
        pool=services.hybrid_pool,
    )

    now = datetime.now(UTC)
    ticket_rows, decision_rows = [], []
    meta: dict[int, dict[str, Any]] = {}
    for n, (i, outcome) in enumerate(zip(fresh, outcomes, strict=True)):
        ticket = items[i].ticket
        ticket_rows.append(
            db.ticket_values(
                ticket,
                content_hash=content_hash(texts[i]),
                backfill=outcome is None,
                model=model,
            )
        )
        readable = reasons[n] is None
        if outcome is None:
            meta[i] = vector_meta(ticket.key, ticket.key, "history", readable)
            results[i] = ItemResult("stored")
            continue
        decision_rows.append(
            _decision_values(ticket, outcome, model, thresholds[n], now, ratios[n])
        )
        meta[i] = vector_meta(ticket.key, outcome.canonical, outcome.route, readable)
        results[i] = ItemResult(outcome.route, outcome)
    for i in repair:
        k = known[items[i].ticket.key]
        outcome = _outcome_of(k)
        if outcome is None:
            meta[i] = vector_meta(items[i].ticket.key, items[i].ticket.key, "history")
        else:
            meta[i] = vector_meta(
                outcome.key, outcome.canonical, outcome.route, outcome.reason is None
            )
        results[i] = ItemResult("unchanged", outcome)

    # Fenced: if this section's lock was lost and another holder decided meanwhile, nothing
    # is written and the batch is retried on a fresh view (DecisionLockLost, transient).
    with section.committing() if section is not None else contextlib.nullcontext(None) as check:

        def write(session: Session) -> None:
            if check is not None:
                check(session)
            db.save_batch(session, ticket_rows, decision_rows)
            if services.outbox is not None:  # the decisions' actions, in the same transaction
                services.outbox.stage(session, decision_rows)

        _sql(write, services.engine, commit=True)
        order = fresh + repair
        services.store.upsert(
            [items[i].ticket.key for i in order],
            np.stack([vectors[i] for i in order]).astype(np.float32),
            [meta[i] for i in order],
        )
    logger.info(
        "batch of %d: %d decided, %d history, %d repaired",
        len(todo),
        len(decision_rows),
        len(ticket_rows) - len(decision_rows),
        len(repair),
    )
    return results


def _lexical_side(
    items: Sequence[WorkItem],
    fresh: list[int],
    to_route: list[bool],
    vectors: Vectors,
    stored: list[list[Neighbour]],
    services: Services,
) -> list[dict[TicketKey, float]]:
    """BM25 scores of each routed ticket's candidates; lexical-only candidates join ``stored``.

    The index holds every stored ticket: this process adds its own here, and where other
    processes write too (a Chroma server) ``Services.before_decide`` catches it up from SQL
    under the decision lock (worker/runtime.py). The batch's tickets enter it in order, so
    ticket n is scored against the stored tickets and its earlier batch-mates, as routing
    compares it. Candidates found only by BM25 get their vector from the store (one call
    for the batch) and their cosine computed here; one without a vector yet is skipped.
    """
    index = services.lexical
    assert index is not None
    scores_of: list[dict[TicketKey, float]] = []
    wanted: dict[int, list[TicketKey]] = {}
    for n, i in enumerate(fresh):
        ticket = items[i].ticket
        text = lexical_text(ticket.subject, ticket.body, ticket.body_format)
        if to_route[n]:
            known = {nb.key for nb in stored[n]} | {items[j].ticket.key for j in fresh[:n]}
            scores, wanted[n] = lexical_scores(
                index, text, known, services.hybrid_pool, exclude=ticket.key
            )
            scores_of.append(scores)
        else:
            scores_of.append({})
        index.add(ticket.key, text)
    add_lexical_only(services.store, wanted, vectors, stored)
    return scores_of


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
    key: TicketKey, canonical: TicketKey, route: str, readable: bool = True
) -> dict[str, Any]:
    return {
        "source": key.source,
        "ticket_id": key.ticket_id,
        "canonical_source": canonical.source,
        "canonical_ticket_id": canonical.ticket_id,
        "route": route,
        "readable": readable,
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
        "latency_ms": max(0, round((now - ticket.received_at).total_seconds() * 1000)),
        "unknown_ratio": None if unknown_ratio is None else round(unknown_ratio, 4),
        "reason": outcome.reason,
    }


def _match_values(m: Neighbour) -> dict[str, Any]:
    values: dict[str, Any] = {
        "source": m.key.source,
        "ticket_id": m.key.ticket_id,
        "score": round(m.score, 6),
    }
    if m.fused is not None:
        values["fused_score"] = round(m.fused, 6)
    return values


def _sql(fn: Callable[[Session], Any], engine: Engine, *, commit: bool = False) -> Any:
    """Run fn in a session; a database outage becomes a retryable StoreUnavailable."""
    try:
        with Session(engine, expire_on_commit=False) as session:
            result = fn(session)
            if commit:
                session.commit()
            return result
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"database error: {exc.__class__.__name__}: {exc}") from exc
