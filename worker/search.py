"""Search the stored tickets for a text, ranked exactly as the worker ranks a new ticket.

`triage search` asks a running worker (the process that owns the embedded store, or any
worker on a shared Chroma server) through a Celery task on the small search queue
(worker/tasks.py, config/celery_app.py); with no worker running it opens the store itself
and calls the same function. The text is treated as a ticket body: embedded as the worker
embeds one, its nearest stored tickets by cosine and, under hybrid ranking, the best by
BM25 form the pool, fused and ranked by worker.routing.decide (the worker's own code path),
so a search shows what a ticket with this text would be matched with.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from sqlalchemy.orm import Session

from tickets import db
from tickets.model import Ticket, TicketKey
from worker.lexical import lexical_text
from worker.pipeline import Services, add_lexical_only, lexical_scores
from worker.routing import RankedBy, decide
from worker.store import Neighbour
from worker.text import embed_tickets, embedding_text

# The query's own key: never a stored ticket's (sources never contain ':').
_QUERY = TicketKey("search", ":query")
_TITLE_CHARS = 200


@dataclass(frozen=True)
class Hit:
    key: TicketKey
    cosine: float
    fused: float | None
    title: str


@dataclass(frozen=True)
class SearchAnswer:
    """The matches in ranked order, and how they were ranked (as the worker ranks)."""

    ranked_by: RankedBy
    alpha: float
    pool: int
    hits: list[Hit]
    answered_by: str | None = None  # the worker that ran it; None when run here

    def describe(self) -> str:
        if self.ranked_by == "hybrid":
            how = (
                f"ranked as the worker ranks: hybrid (cosine fused with BM25, alpha "
                f"{self.alpha:g}, pool {self.pool})"
            )
        else:
            how = "ranked as the worker ranks: by cosine"
        who = f"answered by worker {self.answered_by}" if self.answered_by else "searched here"
        return f"{how}; {who}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ranked_by": self.ranked_by,
            "alpha": self.alpha,
            "pool": self.pool,
            "answered_by": self.answered_by,
            "hits": [
                {
                    "source": h.key.source,
                    "ticket_id": h.key.ticket_id,
                    "cosine": h.cosine,
                    "fused": h.fused,
                    "title": h.title,
                }
                for h in self.hits
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchAnswer:
        return cls(
            ranked_by=data["ranked_by"],
            alpha=float(data["alpha"]),
            pool=int(data["pool"]),
            answered_by=data.get("answered_by"),
            hits=[
                Hit(
                    TicketKey(h["source"], h["ticket_id"]),
                    float(h["cosine"]),
                    None if h["fused"] is None else float(h["fused"]),
                    str(h["title"]),
                )
                for h in data["hits"]
            ],
        )


def search(services: Services, text: str, k: int) -> SearchAnswer:
    """The ``k`` stored tickets a ticket with body ``text`` would be shown, best first.

    Raises InvalidTicket for an empty text, and the store's and the embedder's errors."""
    query = Ticket.from_message({"source": _QUERY.source, "ticket_id": "query", "body": text})
    vector = embed_tickets(
        services.embedder.embed, [embedding_text(query)], [None], services.subject_weight
    )
    hybrid = services.lexical is not None and services.hybrid_alpha < 1
    depth = max(k, services.hybrid_pool) if hybrid else k
    lexical: list[dict[TicketKey, float]] | None = None
    # The batch's section of this process: the store's cache and the lexical index are
    # read while no batch of this process changes them.
    with services.local_lock:
        if services.before_decide is not None:
            services.before_decide()  # follow a `triage reindex` switch
        if services.purges is not None:
            services.purges.catch_up(services)  # never shows a ticket purged meanwhile
        if services.lexical is not None:
            services.lexical.refresh(services.engine)  # what other workers stored since
        stored: list[list[Neighbour]] = [services.store.query(vector, depth)[0]]
        if hybrid and services.lexical is not None:
            scores, wanted = lexical_scores(
                services.lexical,
                lexical_text(None, text),
                {nb.key for nb in stored[0]},
                services.hybrid_pool,
            )
            add_lexical_only(services.store, {0: wanted}, vector, stored)
            lexical = [scores]
    [outcome] = decide(
        [_QUERY],
        np.asarray(vector, dtype=np.float32),
        stored,
        decide_mask=[True],
        thresholds=services.thresholds.for_queue(None),
        top_k=k,
        lexical=lexical,
        alpha=services.hybrid_alpha,
        pool=services.hybrid_pool,
    )
    assert outcome is not None
    with Session(services.engine) as session:
        rows = db.tickets_by_key(session, [m.key for m in outcome.matches])
    hits = [
        Hit(
            m.key,
            round(m.score, 6),
            None if m.fused is None else round(m.fused, 6),
            _title(rows.get(m.key)),
        )
        for m in outcome.matches
    ]
    return SearchAnswer(outcome.ranked_by, services.hybrid_alpha, services.hybrid_pool, hits)


def _title(row: db.TicketRow | None) -> str:
    if row is None:
        return ""
    text = " ".join((row.subject or row.body or "").split())
    return text[:_TITLE_CHARS]


# --- the request over the broker: `triage search` asks, a worker answers ---------------------

#: How long an answer waits in Redis for the command that asked (it normally reads at once).
REPLY_TTL_S = 60


def reply_key() -> str:
    """A fresh Redis key for one request's answer."""
    return f"triage:search:reply:{uuid.uuid4().hex}"


def send_reply(client: redis.Redis, key: str, payload: dict[str, Any]) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, json.dumps(payload))
    pipe.expire(key, REPLY_TTL_S)
    pipe.execute()


def wait_reply(client: redis.Redis, key: str, timeout_s: float) -> dict[str, Any] | None:
    """The answer, or None when none came within ``timeout_s``."""
    got: Any = client.blpop([key], timeout=max(1, round(timeout_s)))
    if got is None:
        return None
    client.delete(key)
    answer: dict[str, Any] = json.loads(got[1])
    return answer
