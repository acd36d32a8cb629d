"""`triage reindex`: re-embed every stored ticket into a new collection, then switch over.

SQL is the source of truth (every accepted ticket's text is in ``triage_tickets``), so a
model change, a lost store or a corrupted index is repaired by re-embedding from there.
The new collection is filled while the old one keeps serving; the switch is one row in
``triage_index_state`` written under the decision lock after a final catch-up pass, so
no ticket decided meanwhile is missing from the new collection. The final pass and the
switch are fenced as one: no worker commits between them (with scoped locks, each scope's
commit shares the global fence row; worker/decision_lock.py), and a worker that ranked a
batch on the old collection finds the switch in its own commit and ranks it again.
Workers read the active collection when they start and, with a Chroma server, check it
before every batch.

Then the vectors kept in SQL beside each ticket (worker/pipeline.py) are rewritten from
the new collection, filling those of tickets stored before vectors were kept. Until the
rewrite reaches a row, its kept vector is the old collection's; no worker reads it: a
worker reads kept vectors of the tickets committed after its snapshot (in the new
collection's space) and of tickets not yet in the store, and the switch marks every
ticket in the new collection as stored.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from config.redis_client import connect as redis_connect
from config.settings import Settings
from tickets import db
from tickets.model import Ticket, TicketKey
from worker.coverage import CoverageGuard
from worker.decision_lock import DecisionLock
from worker.embedding import Embedder
from worker.pipeline import DECISION_LOCK, encode_vector, vector_meta
from worker.store import VectorStore, open_store
from worker.text import embed_tickets, embedding_text

logger = logging.getLogger(__name__)

CHUNK = 256
FILL_PASSES = 5


def active_collection(engine: Engine, settings: Settings) -> str:
    """The collection workers use: the one `triage reindex` switched to, else the setting."""
    with Session(engine) as session:
        return db.get_state(session, db.ACTIVE_COLLECTION) or settings.chroma_collection


def new_collection_name(settings: Settings, model_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-._")[:60]
    return f"{settings.chroma_collection}-{slug}-{datetime.now(UTC):%Y%m%d%H%M%S}"


@dataclass(frozen=True)
class ReindexResult:
    old: str
    new: str
    tickets: int


def _rows(
    engine: Engine, after_id: int
) -> Iterator[list[tuple[db.TicketRow, db.DecisionRow | None]]]:
    """Tickets (with their decision) in id order, CHUNK at a time."""
    last = after_id
    while True:
        with Session(engine) as session:
            rows = session.execute(
                select(db.TicketRow, db.DecisionRow)
                .outerjoin(
                    db.DecisionRow,
                    (db.DecisionRow.source == db.TicketRow.source)
                    & (db.DecisionRow.ticket_id == db.TicketRow.ticket_id),
                )
                .where(db.TicketRow.id > last)
                .order_by(db.TicketRow.id)
                .limit(CHUNK)
            ).all()
        if not rows:
            return
        last = rows[-1][0].id
        yield [(t, d) for t, d in rows]


def _index(
    rows: list[tuple[db.TicketRow, db.DecisionRow | None]],
    embedder: Embedder,
    store: VectorStore,
    guard: CoverageGuard | None,
    subject_weight: float,
) -> None:
    """Embed these tickets and store them in ``store`` with their decisions' metadata."""
    # A purged ticket (tickets/purge.py) has no text left and gets no vector.
    rows = [(t, d) for t, d in rows if t.body or t.subject]
    if not rows:
        return
    tickets = [
        Ticket(
            source=t.source,
            ticket_id=t.ticket_id,
            subject=t.subject,
            body=t.body or "",
            body_format=t.body_format,
            queue=t.queue,
            tags=tuple(t.tags or ()),
            received_at=t.received_at,
        )
        for t, _ in rows
    ]
    texts = [embedding_text(t) for t in tickets]
    vectors = embed_tickets(embedder.embed, texts, [t.subject for t in tickets], subject_weight)
    ratios = guard.unknown_ratios(texts) if guard else [0.0] * len(texts)
    metas: list[dict[str, Any]] = []
    for (t, d), ratio in zip(rows, ratios, strict=True):
        key = TicketKey(t.source, t.ticket_id)
        readable = guard is None or guard.reason(ratio) is None
        if d is None:
            metas.append(vector_meta(key, key, "history", readable, t.queue))
        else:
            canonical = TicketKey(d.canonical_source, d.canonical_ticket_id)
            metas.append(vector_meta(key, canonical, d.route, readable, t.queue))
    store.upsert([TicketKey(t.source, t.ticket_id) for t, _ in rows], np.asarray(vectors), metas)


def reindex(
    settings: Settings,
    embedder: Embedder,
    engine: Engine,
    *,
    collection: str | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> ReindexResult:
    old = active_collection(engine, settings)
    new = collection or new_collection_name(settings, embedder.model_id)
    if new == old:
        raise ValueError(f"collection {new!r} is the active one: reindex into a new name")
    guard = CoverageGuard.for_embedder(embedder, settings)
    store = open_store(settings, embedder, new)
    count = 0
    last_id = 0
    try:
        # Passes until one finds little new (at most a few, if ingest outruns re-embedding):
        # the final pass runs with every commit held.
        for _ in range(FILL_PASSES):
            before = count
            for rows in _rows(engine, last_id):
                _index(rows, embedder, store, guard, settings.subject_weight)
                count += len(rows)
                last_id = rows[-1][0].id
                progress(len(rows))
            if count - before < CHUNK:
                break
        lock: Any = contextlib.nullcontext()
        if settings.uses_chroma_server:
            # Stop workers' decision sections for the catch-up and the switch: the workers'
            # own lock, whose fence also stops a section that outlived its lock from
            # committing into the old collection after the catch-up read past it.
            client = redis_connect(settings)
            lock = DecisionLock(
                client, engine, DECISION_LOCK, ttl_s=settings.decision_lock_ttl_s, wait_s=60
            )()
        with lock as section:
            fenced = section.committing() if section is not None else contextlib.nullcontext()
            with fenced as check, Session(engine) as session:
                if check is not None:
                    check(session)  # SQLite: holds the write lock from here to the commit
                for rows in _rows(engine, last_id):
                    _index(rows, embedder, store, guard, settings.subject_weight)
                    count += len(rows)
                    last_id = rows[-1][0].id
                    progress(len(rows))
                db.set_state(session, db.ACTIVE_COLLECTION, new)
                # Every ticket is in the new collection now, those whose vectors had not
                # reached the old one too.
                session.execute(
                    update(db.TicketRow)
                    .where(db.TicketRow.indexed_at.is_(None))
                    .values(indexed_at=datetime.now(UTC))
                )
                session.commit()
        _keep_vectors(engine, store, last_id, embedder.dimension)
    finally:
        store.close()
    logger.info("reindexed %d tickets into %s (was %s)", count, new, old)
    return ReindexResult(old, new, count)


def _keep_vectors(engine: Engine, store: VectorStore, upto: int, dimension: int) -> None:
    """Rewrite the vectors kept in SQL of the tickets up to id ``upto`` from ``store``."""
    after = 0
    while after < upto:
        with Session(engine) as session:
            rows = session.execute(
                select(db.TicketRow.id, db.TicketRow.source, db.TicketRow.ticket_id)
                .where(db.TicketRow.id > after, db.TicketRow.id <= upto)
                .order_by(db.TicketRow.id)
                .limit(CHUNK * 4)
            ).all()
            if not rows:
                return
            keys = {TicketKey(r.source, r.ticket_id): int(r.id) for r in rows}
            got = store.fetch(list(keys), remember=False)
            db.keep_vectors(
                session,
                {key: encode_vector(v) for key, (v, _) in got.items() if len(v) == dimension},
            )
            session.commit()
            after = int(rows[-1].id)
