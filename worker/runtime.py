"""The per-process runtime: clients built once per worker process, after fork, and passed in.

Nothing connects at import. The first task in a process (or the worker's start-up hook)
calls :func:`get_runtime`, which builds the embedder, opens the vector store and the
database engine, checks the schema, and starts the batcher.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import requests
from redis.exceptions import RedisError
from sqlalchemy import Engine

from actions.delivery import Deliverer, Holds
from actions.helpdesks import writers
from actions.outbox import Outbox, Publisher
from actions.sweeper import OutboxSweeper
from config.celery_app import create_app
from config.redis_client import connect as redis_connect
from config.settings import Settings, load_settings
from tickets import migrate
from tickets.db import make_engine
from tickets.errors import ConfigError, ModelMismatch, StoreUnavailable, TriageError
from tickets.ledger import Ledger
from tickets.queue import publish
from worker.batcher import Batcher
from worker.coverage import CoverageGuard
from worker.decision_lock import DecisionLock, ScopeLocks
from worker.embedding import make_embedder
from worker.lexical_snapshot import open_index
from worker.pipeline import (
    DECISION_LOCK,
    ItemResult,
    PreparedBatch,
    SectionLock,
    Services,
    ThresholdSource,
    VectorCache,
    WorkItem,
    finish_batch,
    prepare_batch,
    unlocked,
)
from worker.purge import PurgeThread, PurgeWatch
from worker.reindex import active_collection
from worker.store import embedder_digest, open_store
from worker.thresholds import load_for_model, model_advice
from worker.window import WindowIndex

logger = logging.getLogger(__name__)

# How often a worker asks its embedder whether the model behind its name changed.
DIGEST_CHECK_S = 60.0


@dataclass
class Runtime:
    settings: Settings
    services: Services
    batcher: Batcher[WorkItem, ItemResult]
    ledger: Ledger
    sweeper: LedgerSweeper | None = None
    # Tombstones and the daily retention purge (worker/purge.py).
    purge_thread: PurgeThread | None = None
    # The outbox's delivery side (actions/): this process's deliverer and sweeper.
    deliverer: Deliverer | None = None
    outbox_sweeper: OutboxSweeper | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # When this process last finished a critical section (its worker heartbeat shows it).
    last_batch_at: datetime | None = None

    @property
    def redis(self) -> redis.Redis:
        """This process's client of the broker's Redis (the ledger's)."""
        return self.ledger.redis

    def facts(self) -> dict[str, Any]:
        """What this worker's heartbeat tells readers (tickets/heartbeat.py)."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queue": self.settings.queue,
            "model": self.services.embedder.model_id,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "last_batch_at": None
            if self.last_batch_at is None
            else self.last_batch_at.isoformat(timespec="seconds"),
        }

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.outbox_sweeper is not None:
            self.outbox_sweeper.stop()
        if self.deliverer is not None:
            self.deliverer.close()
        self.batcher.stop()
        self.services.store.close()
        self.services.engine.dispose()


def quietly(what: str, fn: Callable[..., None], *args: Any) -> None:
    """A ledger call that fails is only logged: the ledger is the safety net, not the path."""
    try:
        fn(*args)
    except RedisError as exc:
        logger.warning("ledger %s failed: %s", what, exc)


class LedgerSweeper:
    """Runs the ledger sweep every TRIAGE_LEDGER_SWEEP_S in this process; a Redis key makes
    it one sweep per period across all worker processes."""

    def __init__(self, settings: Settings, ledger: Ledger, engine: Engine) -> None:
        self.settings, self.ledger, self.engine = settings, ledger, engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-sweep", daemon=True)
        self._app: Any = None
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _republish(self, tickets: list[Any], mode: str) -> Any:
        if self._app is None:
            self._app = create_app(self.settings)
        return publish(self._app, tickets, mode=mode, queue=self.settings.queue)  # type: ignore[arg-type]

    def sweep_once(self) -> None:
        period = max(1, int(self.settings.ledger_sweep_s))
        claim = f"triage:ledger-sweep:{self.settings.queue}"
        if not self.ledger.redis.set(claim, os.getpid(), nx=True, ex=period):
            return  # another worker sweeps this period
        result = self.ledger.sweep(
            self.engine, self._republish, silent_for_s=self.settings.ledger_silence
        )
        if result.looked_at:
            logger.info(
                "ledger sweep: %d silent, %d settled, %d published again",
                result.looked_at,
                result.resolved,
                result.republished,
            )

    def _run(self) -> None:
        while not self._stop.wait(self.settings.ledger_sweep_s):
            try:
                self.sweep_once()
            except Exception as exc:  # never let the safety net take the worker down
                logger.warning("ledger sweep failed: %s", exc)


def start_delivery(
    settings: Settings, engine: Engine, publish: Callable[[list[str]], object]
) -> tuple[Deliverer, OutboxSweeper]:
    """This process's outbox delivery: one HTTP client, the targets' shared holds, and the
    sweeper of due actions (publishing through the outbox's own publisher)."""
    client = redis_connect(settings, timeout_s=10)
    http = requests.Session()
    http.headers["user-agent"] = "ticket-triage"
    deliverer = Deliverer(
        settings, engine, http, Holds(client, settings.queue), writers(settings, http)
    )
    return deliverer, OutboxSweeper(settings, engine, client, publish)


def build_runtime(settings: Settings) -> Runtime:
    embedder = make_embedder(settings)
    embedder.check()
    engine = make_engine(settings.database_url)
    migrate.require_current(engine)
    store = open_store(settings, embedder, active_collection(engine, settings))
    scope = None if settings.match_scope == "global" else settings.match_scope
    if scope == "queue" and not store.has_queue_metadata and store.count() > 0:
        store.close()
        raise ConfigError(
            f"TRIAGE_MATCH_SCOPE=queue filters the store on each vector's queue, which the "
            f"collection {store.collection_name!r} was written without: run `triage reindex` "
            "first (it writes a new collection with it)"
        )
    lock: SectionLock = unlocked
    scope_lock: ScopeLocks | None = None
    if settings.uses_chroma_server:
        # Several processes share the server: serialise their decision sections, per match
        # scope when matching is scoped.
        client = redis_connect(settings)
        lock = DecisionLock(client, engine, DECISION_LOCK, ttl_s=settings.decision_lock_ttl_s)
        if scope is not None:
            scope_lock = ScopeLocks(
                client, engine, DECISION_LOCK, ttl_s=settings.decision_lock_ttl_s
            )
    advice = model_advice(settings, embedder)  # per-model calibrated defaults
    for note in (*advice.notes, advice.guard_note):
        if note:
            logger.warning("%s", note)
    thresholds: ThresholdSource = advice.thresholds
    if settings.thresholds_file is not None:
        thresholds = _threshold_table(settings.thresholds_file, embedder.model_id)
    # Before the lexical index reads SQL: only tombstones committed after concern it.
    purges = PurgeWatch(engine)
    lexical = None
    if settings.hybrid_alpha < 1:
        # Catch up with the stored tickets now, not in the first batch.
        lexical = open_index(engine, directory=settings.lexical_snapshot_dir, scope_field=scope)
    window = None
    if settings.match_window_days > 0:
        # Filled from SQL's kept vectors now, not in the first batch.
        window = WindowIndex(settings.match_window_days, embedder.dimension, scope_field=scope)
        window.load(engine, store)
    services = Services(
        coverage=CoverageGuard.for_embedder(embedder, settings),
        embedder=embedder,
        store=store,
        engine=engine,
        thresholds=thresholds,
        subject_weight=settings.subject_weight,
        top_k=settings.top_k,
        lock=lock,
        match_scope=scope,
        match_statuses=settings.match_status_filter,
        scope_lock=scope_lock,
        lexical=lexical,
        hybrid_alpha=settings.hybrid_alpha,
        hybrid_pool=settings.hybrid_pool,
        vector_cache=VectorCache(),
        outbox=Outbox(settings, Publisher(settings)),
        window=window,
        purges=purges,
    )

    if settings.uses_chroma_server:
        # A `triage reindex` may switch the active collection: followed before each snapshot.
        services.before_decide = lambda: _follow_switch(settings, services)

    ledger = Ledger(redis_connect(settings, timeout_s=10), settings.queue)

    digest_watch = DigestWatch(services)

    def prepare(items: Sequence[WorkItem]) -> PreparedBatch:
        quietly("touch", ledger.touch, [item.ticket.key for item in items])
        digest_watch.check()
        return prepare_batch(items, services)

    def finish(prepared: PreparedBatch) -> list[ItemResult]:
        results = finish_batch(prepared, services)
        runtime.last_batch_at = datetime.now(UTC)
        settled = [
            item.ticket.key
            for item, result in zip(prepared.items, results, strict=True)
            if result.error is None
        ]
        quietly("clear", ledger.clear, settled)
        # Outside the decision lock: the committed decisions' actions go to their queue.
        if services.outbox is not None:
            services.outbox.publish_committed()
        return results

    # Two stages: the next batch is embedded while this one is in its critical section.
    batcher: Batcher[WorkItem, ItemResult] = Batcher(
        prepare,
        finish=finish,
        max_size=settings.batch_size,
        max_wait_s=settings.batch_wait_ms / 1000,
    )
    logger.info(
        "triage runtime ready: embedder %s, store %s, database %s",
        embedder.describe(),
        store.location,
        engine.url.render_as_string(),
    )
    runtime = Runtime(settings, services, batcher, ledger)
    return runtime


def _threshold_table(path: Path, model_id: str) -> ThresholdSource:
    try:
        table = load_for_model(path, model_id)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"TRIAGE_THRESHOLDS_FILE: {exc}") from exc
    logger.info(
        "thresholds from %s: default %s, %d queue(s)", path, table.default, len(table.queues)
    )
    return table


class DigestWatch:
    """Stops this worker when its embedder's model changes under the same name.

    An Ollama tag can be pulled again while the worker runs; Ollama then serves the new
    model at once, and its vectors would land in a collection recorded with the old one's
    digest (worker/store.py refuses that collection at the next start). Checked before a
    batch is embedded, at most every ``interval_s``.
    """

    def __init__(self, services: Services, interval_s: float = DIGEST_CHECK_S) -> None:
        self.services, self.interval_s = services, interval_s
        self._next = time.monotonic() + interval_s

    def check(self) -> None:
        now = time.monotonic()
        recorded = self.services.store.model_digest
        if recorded is None or now < self._next:
            return
        self._next = now + self.interval_s
        try:
            current = embedder_digest(self.services.embedder)
        except TriageError as exc:  # the embedding call right after will say more
            logger.debug("model digest not checked: %s", exc)
            return
        if current is None or current == recorded:
            return
        logger.critical(
            "embedding model %s changed under its name (digest %s, the collection's %s); "
            "stopping this worker: run `triage reindex`",
            self.services.embedder.model_id,
            current[:12],
            recorded[:12],
        )
        os.kill(os.getpid(), signal.SIGTERM)
        raise StoreUnavailable(
            f"the model behind {self.services.embedder.model_id!r} changed (digest "
            f"{current[:12]}…, collection {recorded[:12]}…)"
        )


def _follow_switch(settings: Settings, services: Services) -> None:
    """After `triage reindex` switched the active collection, use it from the next batch on.

    A worker whose model does not match the new collection cannot go on: it asks itself to
    stop (warm shutdown) and the batch is retried, by a worker started with the new model.
    """
    active = active_collection(services.engine, settings)
    if active == services.store.collection_name:
        return
    try:
        new = open_store(settings, services.embedder, active)
    except ModelMismatch as exc:
        logger.critical("active collection switched to %s: %s; stopping this worker", active, exc)
        os.kill(os.getpid(), signal.SIGTERM)
        raise StoreUnavailable(f"this worker's model does not match collection {active!r}") from exc
    old, services.store = services.store, new
    old.close()
    if services.window is not None:  # the window's vectors are the old collection's
        window = services.window
        services.window = WindowIndex(window.days, window.dimension, scope_field=window.scope_field)
        services.window.load(services.engine, new, from_store=True)
    logger.info("switched to collection %s", active)


_runtime: Runtime | None = None


@dataclass
class DeliveryRuntime:
    """A `deliveries` worker's runtime (TRIAGE_WORKER_ROLE): the database and the outbox's
    delivery side, no model, no vector store, no batcher."""

    settings: Settings
    engine: Engine
    deliverer: Deliverer
    outbox_sweeper: OutboxSweeper

    def close(self) -> None:
        self.outbox_sweeper.stop()
        self.deliverer.close()
        self.engine.dispose()


def build_delivery_runtime(settings: Settings) -> DeliveryRuntime:
    engine = make_engine(settings.database_url)
    migrate.require_current(engine)
    deliverer, sweeper = start_delivery(settings, engine, Publisher(settings))
    logger.info("triage delivery runtime ready: database %s", engine.url.render_as_string())
    return DeliveryRuntime(settings, engine, deliverer, sweeper)


_runtime_pid: int | None = None
_runtime_lock = threading.Lock()
_delivery: DeliveryRuntime | None = None


def get_runtime() -> Runtime:
    """This process's runtime, built on first use (and again after a fork)."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = build_runtime(load_settings())
            _runtime_pid = os.getpid()
            r = _runtime
            r.sweeper = LedgerSweeper(r.settings, r.ledger, r.services.engine)
            assert isinstance(r.services.purges, PurgeWatch)
            r.purge_thread = PurgeThread(
                r.services,
                r.services.purges,
                r.ledger.redis,
                r.settings.queue,
                r.settings.ledger_sweep_s,
                r.settings.retention_days,
                r.settings.lexical_snapshot_dir,
            )
            assert r.services.outbox is not None
            if r.settings.worker_role == "all":
                r.deliverer, r.outbox_sweeper = start_delivery(
                    r.settings, r.services.engine, r.services.outbox.publish
                )
            freeze_startup_heap()
        return _runtime


def freeze_startup_heap() -> int:
    """Leave what start-up built out of the garbage collector's full collections; returns
    how many objects that is.

    The lexical index, the clients and the caches live as long as the process: about
    670,000 tracked objects at 100,000 stored tickets, 1.6 million at 1M. A full collection
    walks every one (≈ 125 ms at 100k, 0.5-0.7 s at 1M on a 2-core VM: bench/gc_pause.py),
    pausing every thread. Frozen, they are skipped: a full collection walks what was
    allocated since. Garbage is collected first, so nothing dead is kept."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("start-up heap frozen: %d objects left out of full collections", frozen)
    return frozen


def get_delivery_runtime() -> DeliveryRuntime:
    """A `deliveries` worker's runtime, built on first use (and again after a fork)."""
    global _delivery, _runtime_pid
    with _runtime_lock:
        if _delivery is None or _runtime_pid != os.getpid():
            _delivery = build_delivery_runtime(load_settings())
            _runtime_pid = os.getpid()
        return _delivery


def get_deliverer() -> Deliverer:
    """This process's deliverer, whatever its role (a `tickets` worker has none)."""
    built = _delivery if _runtime_pid == os.getpid() else None
    if built is not None:
        return built.deliverer
    if _runtime is None and load_settings().worker_role == "deliveries":
        return get_delivery_runtime().deliverer
    deliverer = get_runtime().deliverer
    if deliverer is None:
        raise ConfigError("this worker's TRIAGE_WORKER_ROLE is `tickets`: it delivers nothing")
    return deliverer


def close_runtime() -> None:
    global _runtime, _delivery
    with _runtime_lock:
        if _runtime is not None and _runtime_pid == os.getpid():
            _runtime.close()
        if _delivery is not None and _runtime_pid == os.getpid():
            _delivery.close()
        _runtime = None
        _delivery = None
