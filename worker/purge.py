"""Purges outside SQL: the broker's queue, the ledger, and each worker process's derived
state (vector store, lexical index, caches); and the daily retention purge.

- :func:`purge` (``triage purge``): tombstones and SQL erasure (tickets/purge.py), then the
  queued messages and ledger payloads that hold the keys, and an audit row.
- :class:`PurgeWatch` (every worker process): catches up with the tombstones at the start of
  every batch and every TRIAGE_LEDGER_SWEEP_S: drops the keys from the lexical index and
  the vector store's fetch cache, empties the vector cache, and deletes their vectors from
  the vector store (the last id applied to a collection is kept in ``triage_index_state``,
  so a worker that was stopped during a purge applies it when it starts).
- Retention: with TRIAGE_RETENTION_DAYS set, the watch of whichever worker first claims
  the day (a Redis key set NX for 24 hours) runs the purge of older tickets: one run per
  day for the whole deployment, on no extra process, as the ledger sweep is shared.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tickets import db
from tickets import purge as sql
from tickets.ledger import Ledger
from tickets.model import TicketKey, TicketUpdate
from worker.lexical_snapshot import remove_snapshots
from worker.pipeline import Services, forget_purged

logger = logging.getLogger(__name__)

# Tombstones one catch-up applies at most (the rest at the next batch or period): a batch
# never waits long behind a large purge. Each worker's write checks its own keys anyway.
CATCH_UP_LIMIT = 20_000
# Keys per purge transaction: small enough that a worker's write never waits long on the
# purge lock.
PURGE_CHUNK = 2000
_STORE_MARK = "purge_mark:"
DAY_S = 24 * 3600


@dataclass
class PurgeResult:
    run_id: int
    counts: dict[str, int] = field(default_factory=dict)


def purge(
    engine: Engine,
    *,
    requested_by: str,
    keys: Sequence[TicketKey] = (),
    older_than: datetime | None = None,
    redis_client: redis.Redis | None = None,
    queues: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
    lexical_snapshot_dir: Path | None = None,
) -> PurgeResult:
    """Erase these keys (an erasure request) or every ticket received before
    ``older_than`` (retention): SQL first, then the broker's queues and the ledgers. The
    workers drop the keys from their vector store and memory when they read the
    tombstones (PurgeWatch)."""
    reason = sql.ERASURE if keys else sql.RETENTION
    criterion = f"{len(keys)} key(s)"
    if not keys:
        criterion = f"received before {older_than.isoformat()}" if older_than else "nothing"
    with Session(engine) as session:
        run_id = sql.start_run(session, requested_by, reason, criterion)
        session.commit()
    counts = dict.fromkeys((*sql.COUNTED, "queued"), 0)

    def apply(chunk: list[TicketKey]) -> None:
        with Session(engine) as session:
            sql.tombstone(session, chunk, run_id)
            session.commit()
        with Session(engine) as session:
            for kind, n in sql.erase(session, chunk).items():
                counts[kind] += n
            session.commit()
        if redis_client is not None:
            counts["queued"] += scrub_redis(redis_client, queues, chunk)
        if progress is not None:
            progress(len(chunk))

    if keys:
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), PURGE_CHUNK):
            apply(unique[start : start + PURGE_CHUNK])
    elif older_than is not None:
        after = 0
        while True:
            with Session(engine) as session:
                last, chunk = sql.older_than(session, older_than, after, PURGE_CHUNK)
            if last == after:
                break
            apply(chunk)
            after = last
    if any(counts.values()) and remove_snapshots(lexical_snapshot_dir):
        # A BM25 snapshot holds the purged tickets' terms (TRIAGE_LEXICAL_SNAPSHOT_DIR).
        logger.info("purge: BM25 snapshots in %s removed", lexical_snapshot_dir)
    with Session(engine) as session:
        sql.finish_run(session, run_id, counts)
        session.commit()
    return PurgeResult(run_id, counts)


def erase_deleted(
    engine: Engine,
    update: TicketUpdate,
    result: str,
    *,
    redis_client: redis.Redis | None = None,
    queues: Sequence[str] = (),
    lexical_snapshot_dir: Path | None = None,
) -> PurgeResult | None:
    """TRIAGE_ERASE_ON_DELETE: a ticket its helpdesk reports deleted is erased as `triage
    purge --ticket` erases it. Once: a redelivered delete finds the ticket's tombstone. An
    update the worker did not apply (``result`` ``unknown``, ``stale``) erases nothing."""
    if update.status != "deleted" or result not in ("applied", "unchanged"):
        return None
    with Session(engine) as session:
        if sql.purged(session, [update.key]):
            return None
    return purge(
        engine,
        requested_by=f"helpdesk {update.key.source}: ticket deleted",
        keys=[update.key],
        redis_client=redis_client,
        queues=queues,
        lexical_snapshot_dir=lexical_snapshot_dir,
    )


# --- Redis: queued messages and ledger payloads --------------------------------------------


def scrub_redis(client: redis.Redis, queues: Sequence[str], keys: Sequence[TicketKey]) -> int:
    """Remove these tickets from the queued and unacknowledged messages of ``queues`` and
    from their ledgers; returns how many messages were removed or rewritten. A message
    with other tickets is rewritten without the purged ones."""
    wanted = {k.as_id() for k in keys}
    changed = 0
    for queue in queues:
        Ledger(client, queue).clear(keys)
        for raw in client.lrange(queue, 0, -1):  # type: ignore[union-attr]
            new = _without(raw, wanted)
            if new is None:
                continue
            # LREM first: a worker that took the message meanwhile has it (its batch is
            # guarded by the tombstones); only what is still queued is replaced.
            if client.lrem(queue, 1, raw) and new:  # type: ignore[arg-type]
                client.lpush(queue, new)
            changed += 1
    # kombu's unacked hash (tag -> [message, exchange, routing key]) is one per Redis db.
    for tag, raw in (client.hgetall("unacked") or {}).items():  # type: ignore[union-attr]
        try:
            message, *rest = json.loads(raw)
        except ValueError:
            continue
        new = _without(json.dumps(message).encode(), wanted)
        if new is None:
            continue
        if new:
            client.hset("unacked", tag, json.dumps([json.loads(new), *rest]))
        else:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
        changed += 1
    return changed


def _without(raw: bytes | str, wanted: set[str]) -> bytes | None:
    """The kombu message ``raw`` without the tickets in ``wanted``: None when it holds none
    of them, b"" when it holds nothing else."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        encoded = envelope.get("properties", {}).get("body_encoding") == "base64"
        args, kwargs, embed = json.loads(base64.b64decode(body) if encoded else body)
    except (ValueError, KeyError, TypeError):
        return None
    if not args:
        return None
    first = args[0]
    tickets = first if isinstance(first, list) else [first]
    keep = [t for t in tickets if not (isinstance(t, dict) and _id(t) in wanted)]
    if len(keep) == len(tickets):
        return None
    if not keep:
        return b""
    new_args = [keep if isinstance(first, list) else keep[0], *args[1:]]
    data = json.dumps([new_args, kwargs, embed]).encode()
    envelope["body"] = base64.b64encode(data).decode() if encoded else data.decode()
    headers = envelope.get("headers") or {}
    if "argsrepr" in headers:  # the args' repr, shown by Flower: it quotes the text too
        headers["argsrepr"] = repr(new_args)[:1024]
    return json.dumps(envelope).encode()


def _id(message: dict[str, Any]) -> str:
    return f"{message.get('source')}:{message.get('ticket_id')}"


# --- each worker process ------------------------------------------------------------------


class PurgeWatch:
    """One worker process's view of the tombstones (see the module's docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # The lexical index and caches are built after this from SQL, where purged text is
        # gone already: only later tombstones concern them.
        with Session(engine) as session:
            self.seen = sql.newest_tombstone(session)

    def catch_up(self, services: Services) -> int:
        """Apply the tombstones committed since the last call; the caller holds the
        process's local lock. Returns how many keys were dropped from memory."""
        with Session(self.engine) as session:
            newest, keys = sql.tombstones_after(session, self.seen, limit=CATCH_UP_LIMIT)
        if keys:
            forget_purged(services, keys)
            self.seen = newest
        self.sync_store(services)
        return len(keys)

    def sync_store(self, services: Services) -> None:
        """Delete from this process's collection the vectors of keys tombstoned since the
        collection last heard of a purge; their rows are erased again (a batch that
        committed before the tombstone may have published its vectors after the purge)."""
        store = services.store
        name = _STORE_MARK + store.collection_name
        with Session(self.engine) as session:
            mark = int(db.get_state(session, name) or 0)
            newest, keys = sql.tombstones_after(session, mark, limit=PURGE_CHUNK)
        done, t0 = 0, time.perf_counter()
        while keys and done < CATCH_UP_LIMIT:
            done += len(keys)
            store.delete(keys)
            with Session(self.engine) as session:
                sql.erase(session, keys)
                db.set_state(session, name, str(newest))
                session.commit()
                mark = newest
                newest, keys = sql.tombstones_after(session, mark, limit=PURGE_CHUNK)
        if done:
            logger.info(
                "purge: %d purged keys deleted from %s in %.2f s (up to tombstone %d)",
                done,
                store.collection_name,
                time.perf_counter() - t0,
                mark,
            )


class PurgeThread:
    """Runs the watch every ``period_s`` in a worker process (an idle worker still drops
    purged tickets), and the daily retention purge when this process claims the day."""

    def __init__(
        self,
        services: Services,
        watch: PurgeWatch,
        client: redis.Redis,
        queue: str,
        period_s: float,
        retention_days: int | None,
        lexical_snapshot_dir: Path | None = None,
    ) -> None:
        self.lexical_snapshot_dir = lexical_snapshot_dir
        self.services, self.watch, self.redis = services, watch, client
        self.queue, self.period_s, self.retention_days = queue, period_s, retention_days
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="purge-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def once(self) -> None:
        self.retention_once()
        with self.services.local_lock:
            self.watch.catch_up(self.services)

    def retention_once(self, now: datetime | None = None) -> PurgeResult | None:
        """The retention purge, if TRIAGE_RETENTION_DAYS is set and no worker of the
        deployment ran it in the last 24 hours."""
        if not self.retention_days:
            return None
        claim = f"triage:retention:{self.queue}"
        if not self.redis.set(claim, os.getpid(), nx=True, ex=DAY_S):
            return None
        cutoff = (now or datetime.now(UTC)) - timedelta(days=self.retention_days)
        result = purge(
            self.services.engine,
            requested_by=f"retention (TRIAGE_RETENTION_DAYS={self.retention_days})",
            older_than=cutoff,
            redis_client=self.redis,
            queues=[self.queue],
            lexical_snapshot_dir=self.lexical_snapshot_dir,
        )
        logger.info("retention purge: %s", result.counts)
        return result

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.once()
            except Exception as exc:  # the next period tries again
                logger.warning("purge watch failed: %r", exc)
