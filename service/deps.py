"""The HTTP service's dependencies, in one module.

Each app owns its clients (:class:`Clients`, built by ``create_app`` and kept in
``app.state``): the settings, the database engine, a Redis client, the Celery producer that
publishes, the intake (dedupe + ledger + publish), the backlog gate, the rate limiter, the
readiness checks, the metrics and the dashboard's cached numbers. Routes receive them
through FastAPI's ``Depends``; nothing here is module-global, so two apps in one process
(the tests run several) share nothing.

- :func:`require` is the bearer-token check: 401 without a known token, 403 without the
  scope, then the token's rate limit (429).
- :class:`Ingest` reads and checks an ingest body (content type, size, time to arrive, JSON
  depth) and queues tickets (backlog 503, claim 503, broker 503, 202 / 200).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

import anyio
import redis
from celery import Celery
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from config.celery_app import create_app as create_celery
from config.redis_client import connect as redis_connect
from config.settings import Settings
from producer.guards import QueueGate, RateLimiter, json_depth, token_source
from producer.intake import ClaimPending, Intake
from producer.webhooks import VENDORS
from service import queries
from service.health import Readiness
from service.metrics import Metrics
from tickets.db import make_engine
from tickets.model import Ticket, TicketUpdate
from tickets.queue import BrokerUnavailable
from worker.routing import Thresholds
from worker.thresholds import load_thresholds

logger = logging.getLogger(__name__)

RETRY_AFTER_S = "30"
# Bodies parsed and adapted at once; the rest wait their turn on the event loop, holding no
# thread. Two: the machine's cores, and the GIL lets no more run anyway.
CPU_WORKERS = 2
# Several open dashboard pages cost one set of queries per DASHBOARD_CACHE_S.
DASHBOARD_CACHE_S = 2.0
T = TypeVar("T")
Scope = Literal["ingest", "read", "feedback", "admin"]


class ApiError(Exception):
    """An answer naming the problem: ``{"detail": detail}`` with ``status``."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers


class Cached:
    """The value of the last ``ttl_s`` seconds, shared by every caller."""

    def __init__(self, produce: Callable[[], dict[str, Any]], ttl_s: float) -> None:
        self._produce, self._ttl_s = produce, ttl_s
        self._lock = threading.Lock()
        self._value: tuple[float, dict[str, Any]] | None = None

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._value[0] >= self._ttl_s:
                self._value = (time.monotonic(), self._produce())
            return self._value[1]


def dashboard_thresholds(settings: Settings) -> Thresholds:
    """The thresholds drawn on the histogram: the thresholds file's default pair when one is
    configured (per-queue pairs are not drawn), else TRIAGE_DUPLICATE/SUGGEST_THRESHOLD."""
    if settings.thresholds_file is not None:
        try:
            return load_thresholds(settings.thresholds_file).default
        except ValueError as exc:
            logger.warning("dashboard: %s; drawing the configured thresholds instead", exc)
    return Thresholds(settings.duplicate_threshold, settings.suggest_threshold)


@dataclass
class Clients:
    """One app's clients and per-app state."""

    settings: Settings
    engine: Engine
    redis: redis.Redis
    publisher: Celery
    intake: Intake
    metrics: Metrics
    gate: QueueGate
    limiter: RateLimiter
    readiness: Readiness
    dashboard: Cached
    cpu_limiter: anyio.CapacityLimiter = field(
        default_factory=lambda: anyio.CapacityLimiter(CPU_WORKERS)
    )

    @classmethod
    def build(cls, settings: Settings) -> Clients:
        engine = make_engine(settings.database_url)
        client = redis_connect(settings, timeout_s=3)
        publisher = create_celery(settings)
        # kombu's Redis sockets have no timeout by default: a Redis that hangs (not down,
        # just silent) would hold a publishing request, and its thread, until it answers.
        publisher.conf.broker_transport_options = {
            **publisher.conf.broker_transport_options,
            "socket_timeout": 3,
            "socket_connect_timeout": 3,
        }
        intake = Intake(publisher, client, queue=settings.queue, dedupe_ttl_s=settings.dedupe_ttl_s)
        thresholds = dashboard_thresholds(settings)
        return cls(
            settings=settings,
            engine=engine,
            redis=client,
            publisher=publisher,
            intake=intake,
            metrics=Metrics(engine, intake, known=(*VENDORS, "api")),
            gate=QueueGate(client, settings.queue, settings.max_queue_depth),
            # Namespaced by queue: deployments (or tests) sharing one Redis keep separate
            # budgets.
            limiter=RateLimiter(
                client,
                namespace=settings.queue,
                rate=settings.rate_limit_per_s,
                burst=settings.rate_limit_burst,
            ),
            readiness=Readiness(settings),
            dashboard=Cached(
                lambda: queries.read_dashboard(
                    engine, thresholds=thresholds, queue_depth=intake.queue_depth
                ),
                DASHBOARD_CACHE_S,
            ),
        )

    def release(self) -> None:
        """Connections closed at shutdown; each client reconnects if the app runs again."""
        self.engine.dispose()
        self.redis.connection_pool.disconnect()
        self.readiness.client.connection_pool.disconnect()


# --- the dependencies ----------------------------------------------------------------------


# The dependencies that only look up state are coroutines: FastAPI runs a plain function
# in its thread pool, and /readyz must answer while every thread is taken.


async def clients(request: Request) -> Clients:
    found: Clients = request.app.state.clients
    return found


ClientsDep = Annotated[Clients, Depends(clients)]


async def engine(c: ClientsDep) -> Engine:
    return c.engine


EngineDep = Annotated[Engine, Depends(engine)]


def rate_limit(c: Clients, source: str, who: str) -> None:
    """429 with Retry-After once ``source`` is over its budget (TRIAGE_RATE_LIMIT_PER_S)."""
    verdict = c.limiter.check(source)
    if not verdict.allowed:
        c.metrics.rejected(
            source.removeprefix("hook:") if "hook:" in source else "api", "rate_limited"
        )
        raise ApiError(
            429,
            f"rate limit of {who} exceeded ({c.settings.rate_limit_per_s:g}/s, burst "
            f"{c.settings.rate_limit_burst}): retry in {verdict.retry_after_s} s",
            {"Retry-After": str(verdict.retry_after_s)},
        )


def require(scope: Scope) -> Callable[..., list[str]]:
    """A dependency: the bearer token's scopes, once it is known to hold ``scope``."""

    def check(c: ClientsDep, authorization: Annotated[str | None, Header()] = None) -> list[str]:
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not authorization or not authorization.startswith("Bearer ") or not token:
            raise ApiError(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        scopes: list[str] | None = None
        for known, granted in c.settings.api_tokens.items():
            # compare every token, in constant time, so timing says nothing about which
            if hmac.compare_digest(known.encode(), token.encode()):
                scopes = list(granted)
        if scopes is None:
            raise ApiError(401, "invalid bearer token", {"WWW-Authenticate": "Bearer"})
        if scope not in scopes:
            raise ApiError(403, f"this token lacks the {scope!r} scope")
        rate_limit(c, token_source(token), "this token")
        return scopes

    return check


ReadScope = Annotated[list[str], Depends(require("read"))]


# --- ingest: reading a body, queueing its tickets ---------------------------------------------


class Ingest:
    """Reading an ingest body and queueing its tickets, for the ticket and webhook routes."""

    def __init__(self, c: ClientsDep) -> None:
        self.c = c
        self.settings, self.metrics = c.settings, c.metrics

    async def raw_json_body(self, request: Request, source: str) -> bytes:
        settings = self.settings
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            self.metrics.rejected(source, "content_type")
            raise ApiError(415, f"content type must be application/json, got {ctype or 'none'!r}")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            self.metrics.rejected(source, "too_large")
            raise ApiError(413, f"body over {settings.max_body_bytes} bytes")
        chunks, size = [], 0
        try:
            # A client that trickles its body holds a connection and a request: it gets
            # TRIAGE_BODY_TIMEOUT_S for the whole body.
            async with asyncio.timeout(settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.max_body_bytes:
                        self.metrics.rejected(source, "too_large")
                        raise ApiError(413, f"body over {settings.max_body_bytes} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            self.metrics.rejected(source, "body_timeout")
            raise ApiError(
                408,
                f"body not received within {settings.body_timeout_s:g} s (TRIAGE_BODY_TIMEOUT_S)",
                {"Connection": "close"},
            ) from None
        return b"".join(chunks)

    def parse_json(self, raw: bytes, source: str) -> Any:
        # Before json.loads: it recurses per level and fails near 1,000 with RecursionError.
        depth = json_depth(raw)
        limit = self.settings.max_json_depth
        if depth > limit:
            self.metrics.rejected(source, "too_deep")
            raise ApiError(
                400, f"body is nested {depth} levels deep; at most {limit} (TRIAGE_MAX_JSON_DEPTH)"
            )
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            self.metrics.rejected(source, "bad_json")
            raise ApiError(
                400, f"body is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        except UnicodeDecodeError as exc:
            self.metrics.rejected(source, "bad_json")
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        except ValueError:
            # Python refuses to read an integer of more than sys.get_int_max_str_digits()
            # (4,300) digits, an attack on int() that is no ticket's business either.
            self.metrics.rejected(source, "bad_json")
            raise ApiError(400, "body is not valid JSON: a number has too many digits") from None

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (JSON parsing, validation, HTML to text) in a thread of its own
        small pool: the event loop keeps answering (health probes, other requests), and at
        most CPU_WORKERS bodies are worked on at once whatever arrives."""
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=self.c.cpu_limiter)

    async def enqueue_update(self, update: TicketUpdate, source: str) -> JSONResponse:
        """Queue a helpdesk's update of a ticket (202), or 503 when Redis is down."""
        try:
            await run_in_threadpool(self.c.intake.accept_update, update)
        except BrokerUnavailable as exc:
            self.metrics.rejected(source, "broker_unavailable")
            logger.error("cannot enqueue an update from %s: %s", source, exc)
            raise ApiError(
                503, "queue unavailable, retry later", {"Retry-After": RETRY_AFTER_S}
            ) from exc
        body = {"tickets": [{"key": update.key.as_id(), "status": "update"}]}
        return JSONResponse(body, status_code=202)

    async def enqueue(
        self, tickets: list[Ticket], source: str, delivery_id: str | None
    ) -> JSONResponse:
        backlog = await run_in_threadpool(self.c.gate.full)
        if backlog is not None:
            self.metrics.rejected(source, "queue_full")
            logger.warning("backlog %d >= TRIAGE_MAX_QUEUE_DEPTH: refusing %s", backlog, source)
            raise ApiError(
                503,
                f"{backlog} tickets are waiting (limit {self.settings.max_queue_depth}): "
                "retry later",
                {"Retry-After": RETRY_AFTER_S},
            )
        try:
            accepted = await run_in_threadpool(
                self.c.intake.accept, tickets, delivery_id=delivery_id
            )
        except ClaimPending as exc:
            self.metrics.rejected(source, "in_progress")
            raise ApiError(503, f"{exc}: retry", {"Retry-After": "1"}) from None
        except BrokerUnavailable as exc:
            self.metrics.rejected(source, "broker_unavailable")
            logger.error("cannot enqueue %d ticket(s) from %s: %s", len(tickets), source, exc)
            raise ApiError(
                503, "queue unavailable, retry later", {"Retry-After": RETRY_AFTER_S}
            ) from exc
        fresh = sum(a.status == "accepted" for a in accepted)
        self.metrics.accepted(source, fresh)
        body = {"tickets": [{"key": a.key, "status": a.status} for a in accepted]}
        # 202: queued for triage. A pure redelivery is answered 200: nothing new happened.
        return JSONResponse(body, status_code=202 if fresh else 200)


async def ingest(c: ClientsDep) -> Ingest:
    return Ingest(c)


IngestDep = Annotated[Ingest, Depends(ingest)]
