"""`triage serve`: the HTTP face of ticket-triage.

- ``POST /v1/tickets``                       canonical ticket JSON, one or a list (scope ``ingest``)
- ``POST /v1/hooks/{zendesk,github,jira,freshdesk,zammad,helpscout}``  signed vendor webhooks
- ``GET  /v1/decisions/{source}/{ticket_id}``  one decision (scope ``read``)
- ``GET  /v1/decisions``                      paginated list by route, queue, time (``read``)
- ``GET  /v1/stats/routes``                   counts per route per hour/day (``read``)
- ``POST /v1/decisions/{source}/{ticket_id}/feedback``  confirm / veto (scope ``feedback``)
- ``GET  /healthz``, ``GET /readyz``, ``GET /metrics``

Every answer is JSON with a ``detail`` that names the problem: 400/422 for malformed input
(the field named), 401 for a missing or wrong signature or token, 403 for a token without
the scope, 413 for a body over TRIAGE_MAX_BODY_BYTES, 415 for a content type other than
JSON, 429 with Retry-After over a source's rate limit (TRIAGE_RATE_LIMIT_PER_S), 503 with
Retry-After when Redis is unreachable or the backlog is at TRIAGE_MAX_QUEUE_DEPTH. 202 only
once the ticket is on the queue. Never a stack trace.
"""

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import redis
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from config.celery_app import create_app as create_celery
from config.settings import Settings
from producer import readapi
from producer.dashboard import mount_dashboard
from producer.enqueue import BrokerUnavailable
from producer.guards import QueueGate, RateLimiter, json_depth, token_source
from producer.intake import Intake
from producer.metrics import Metrics
from producer.webhooks import (
    VENDORS,
    IgnoredEvent,
    PayloadError,
    SignatureError,
    adapt,
    verify_signature,
)
from worker.db import make_engine
from worker.tickets import Ticket

logger = logging.getLogger(__name__)

RETRY_AFTER_S = "30"
Scope = Literal["ingest", "read", "feedback"]


class ApiError(Exception):
    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers


# --- request bodies and answers (published in the OpenAPI document) ---------------------------


class TicketIn(BaseModel):
    """The canonical ticket (worker.tickets.Ticket). ``received_at`` is set by the service."""

    source: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", examples=["email"])
    ticket_id: str = Field(min_length=1, max_length=255)
    subject: str | None = Field(None, description="cut to 2,000 characters")
    body: str = Field("", description="cut to 200,000 characters")
    created_at: datetime | None = None
    queue: str | None = Field(None, max_length=100)
    tags: list[str] = Field(default_factory=list, max_length=100)


class AcceptedOut(BaseModel):
    key: str
    status: Literal["accepted", "duplicate"]


class IngestOut(BaseModel):
    tickets: list[AcceptedOut]


class FeedbackIn(BaseModel):
    verdict: Literal["confirm", "veto"]
    agent: str = Field(min_length=1, max_length=200)
    comment: str | None = Field(None, max_length=5000)


def create_api(settings: Settings) -> FastAPI:
    """Build the service; clients (Redis, database, Celery producer) belong to this app."""
    engine: Engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    intake = Intake(
        create_celery(settings), client, queue=settings.queue, dedupe_ttl_s=settings.dedupe_ttl_s
    )
    metrics = Metrics(engine, intake)
    gate = QueueGate(client, settings.queue, settings.max_queue_depth)
    # Namespaced by queue: deployments (or tests) sharing one Redis keep separate budgets.
    limiter = RateLimiter(
        client,
        namespace=settings.queue,
        rate=settings.rate_limit_per_s,
        burst=settings.rate_limit_burst,
    )
    api = FastAPI(
        title="ticket-triage",
        version="0.1.0",
        description="Signed helpdesk webhooks in; duplicate / suggest / manual decisions out.",
    )
    api.state.settings, api.state.engine, api.state.intake = settings, engine, intake
    api.state.gate = gate

    # --- errors: every one a JSON answer naming the problem ------------------------------

    @api.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @api.exception_handler(SQLAlchemyError)
    async def _db_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        logger.error("database error: %s", exc)
        return JSONResponse(
            {"detail": "database unavailable"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return JSONResponse({"detail": "internal error"}, status_code=500)

    # --- auth ----------------------------------------------------------------------------

    def require(scope: Scope) -> Callable[..., str]:
        def check(authorization: Annotated[str | None, Header()] = None) -> str:
            token = (authorization or "").removeprefix("Bearer ").strip()
            if not authorization or not authorization.startswith("Bearer ") or not token:
                raise ApiError(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
            scopes: list[str] | None = None
            for known, granted in settings.api_tokens.items():
                # compare every token, in constant time, so timing says nothing about which
                if hmac.compare_digest(known.encode(), token.encode()):
                    scopes = list(granted)
            if scopes is None:
                raise ApiError(401, "invalid bearer token", {"WWW-Authenticate": "Bearer"})
            if scope not in scopes:
                raise ApiError(403, f"this token lacks the {scope!r} scope")
            limit(token_source(token), "this token")
            return token

        return check

    def limit(source: str, who: str) -> None:
        verdict = limiter.check(source)
        if not verdict.allowed:
            metrics.rejected(
                source.removeprefix("hook:") if "hook:" in source else "api", "rate_limited"
            )
            raise ApiError(
                429,
                f"rate limit of {who} exceeded ({settings.rate_limit_per_s:g}/s, burst "
                f"{settings.rate_limit_burst}): retry in {verdict.retry_after_s} s",
                {"Retry-After": str(verdict.retry_after_s)},
            )

    # --- body reading shared by the ingest endpoints --------------------------------------

    async def raw_json_body(request: Request, source: str) -> bytes:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            metrics.rejected(source, "content_type")
            raise ApiError(415, f"content type must be application/json, got {ctype or 'none'!r}")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            metrics.rejected(source, "too_large")
            raise ApiError(413, f"body over {settings.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                metrics.rejected(source, "too_large")
                raise ApiError(413, f"body over {settings.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def parse_json(raw: bytes, source: str) -> Any:
        # Before json.loads: it recurses per level and fails near 1,000 with RecursionError.
        depth = json_depth(raw)
        if depth > settings.max_json_depth:
            metrics.rejected(source, "too_deep")
            raise ApiError(
                400,
                f"body is nested {depth} levels deep; at most {settings.max_json_depth} "
                "(TRIAGE_MAX_JSON_DEPTH)",
            )
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            metrics.rejected(source, "bad_json")
            where = (
                f" at line {exc.lineno} column {exc.colno}"
                if isinstance(exc, json.JSONDecodeError)
                else ""
            )
            raise ApiError(
                400, f"body is not valid JSON{where}: {getattr(exc, 'msg', exc)}"
            ) from None

    async def enqueue(tickets: list[Ticket], source: str, delivery_id: str | None) -> JSONResponse:
        backlog = await run_in_threadpool(gate.full)
        if backlog is not None:
            metrics.rejected(source, "queue_full")
            logger.warning("backlog %d >= TRIAGE_MAX_QUEUE_DEPTH: refusing %s", backlog, source)
            raise ApiError(
                503,
                f"{backlog} tickets are waiting (limit {settings.max_queue_depth}): retry later",
                {"Retry-After": RETRY_AFTER_S},
            )
        try:
            accepted = await run_in_threadpool(intake.accept, tickets, delivery_id=delivery_id)
        except BrokerUnavailable as exc:
            metrics.rejected(source, "broker_unavailable")
            logger.error("cannot enqueue %d ticket(s) from %s: %s", len(tickets), source, exc)
            raise ApiError(
                503, "queue unavailable, retry later", {"Retry-After": RETRY_AFTER_S}
            ) from exc
        fresh = sum(a.status == "accepted" for a in accepted)
        metrics.accepted(source, fresh)
        body = {"tickets": [{"key": a.key, "status": a.status} for a in accepted]}
        # 202: queued for triage. A pure redelivery is answered 200: nothing new happened.
        return JSONResponse(body, status_code=202 if fresh else 200)

    # --- ingest --------------------------------------------------------------------------

    @api.post(
        "/v1/tickets",
        status_code=202,
        response_model=IngestOut,
        tags=["ingest"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/TicketIn"},
                                {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/TicketIn"},
                                    "maxItems": 1000,
                                },
                            ]
                        }
                    }
                },
            }
        },
        responses={400: {}, 401: {}, 403: {}, 413: {}, 415: {}, 422: {}, 429: {}, 503: {}},
    )
    async def ingest_tickets(
        request: Request, _: Annotated[str, Depends(require("ingest"))]
    ) -> JSONResponse:
        """Queue canonical tickets (one object or a list of up to 1000)."""
        raw = await raw_json_body(request, "api")
        payload = parse_json(raw, "api")
        items = payload if isinstance(payload, list) else [payload]
        if not items or len(items) > 1000:
            raise ApiError(
                422, [{"loc": ["body"], "msg": "expected 1 to 1000 tickets", "type": "value_error"}]
            )
        now = datetime.now(UTC)
        tickets, errors = [], []
        for i, item in enumerate(items):
            loc: list[Any] = ["body", i] if isinstance(payload, list) else ["body"]
            try:
                parsed = TicketIn.model_validate(item)
                tickets.append(Ticket(**parsed.model_dump(), received_at=now))
            except ValidationError as exc:
                errors += [
                    {"loc": loc + list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors()
                ]
        if errors:
            metrics.rejected("api", "invalid")
            raise ApiError(422, errors)
        by_source: dict[str, list[Ticket]] = {}
        for t in tickets:
            by_source.setdefault(t.source, []).append(t)
        if len(by_source) > 1:
            raise ApiError(
                422,
                [
                    {
                        "loc": ["body"],
                        "msg": "all tickets of one request must share a source",
                        "type": "value_error",
                    }
                ],
            )
        return await enqueue(tickets, tickets[0].source, None)

    def vendor_endpoint(vendor: str) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def receive(request: Request) -> JSONResponse:
            raw = await raw_json_body(request, vendor)
            try:
                verify_signature(
                    vendor,
                    raw,
                    request.headers,
                    settings.webhook_secrets.get(vendor, []),
                    now=datetime.now(UTC),
                    tolerance_s=settings.zendesk_tolerance_s,
                )
            except SignatureError as exc:
                metrics.rejected(vendor, "signature")
                raise ApiError(401, str(exc)) from None
            # After the signature: forged requests cannot spend a helpdesk's budget. In a
            # thread: a Redis call must not hold the event loop.
            await run_in_threadpool(limit, f"hook:{vendor}", f"the {vendor} webhook")
            payload = parse_json(raw, vendor)
            try:
                delivery = adapt(vendor, payload, request.headers, received_at=datetime.now(UTC))
            except IgnoredEvent as exc:
                return JSONResponse({"ignored": str(exc)}, status_code=200)
            except PayloadError as exc:
                metrics.rejected(vendor, "invalid")
                if exc.field.lower().startswith("x-"):  # a required vendor header
                    loc = ["header", exc.field]
                else:
                    loc = (
                        ["body", *exc.field.split(".")]
                        if exc.field and exc.field != "body"
                        else ["body"]
                    )
                raise ApiError(
                    422, [{"loc": loc, "msg": str(exc), "type": "value_error"}]
                ) from None
            return await enqueue([delivery.ticket], vendor, delivery.delivery_id)

        receive.__name__ = f"webhook_{vendor}"
        receive.__doc__ = (
            f"{vendor.title()} webhook: verified against TRIAGE_WEBHOOK_SECRETS[{vendor!r}]."
        )
        return receive

    for vendor in VENDORS:
        api.add_api_route(
            f"/v1/hooks/{vendor}",
            vendor_endpoint(vendor),
            methods=["POST"],
            tags=["webhooks"],
            status_code=202,
            response_model=IngestOut,
            responses={200: {}, 400: {}, 401: {}, 413: {}, 415: {}, 422: {}, 429: {}, 503: {}},
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        )

    # --- read API --------------------------------------------------------------------------

    SourceP = Annotated[str, Path(max_length=64)]
    TicketP = Annotated[str, Path(max_length=255)]

    @api.get(
        "/v1/decisions/{source}/{ticket_id:path}",
        tags=["read"],
        response_model=readapi.DecisionOut,
        responses={404: {}},
    )
    def get_decision(
        source: SourceP, ticket_id: TicketP, _: Annotated[str, Depends(require("read"))]
    ) -> readapi.DecisionOut:
        """One decision by its ticket key."""
        found = readapi.get_decision(engine, source, ticket_id)
        if isinstance(found, str):
            raise ApiError(404, found)
        return found

    @api.get("/v1/decisions", tags=["read"], response_model=readapi.DecisionPage)
    def list_decisions(
        _: Annotated[str, Depends(require("read"))],
        route: Literal["duplicate", "suggest", "manual"] | None = None,
        queue: Annotated[str | None, Query(max_length=100)] = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None, Query(max_length=40, description="`next_cursor` of the previous page")
        ] = None,
    ) -> readapi.DecisionPage:
        """Newest first; filter by route, queue and decision time; keyset-paginated."""
        try:
            return readapi.list_decisions(
                engine,
                route=route,
                queue=queue,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        except ValueError as exc:
            raise ApiError(
                422, [{"loc": ["query", "cursor"], "msg": str(exc), "type": "value_error"}]
            ) from None

    @api.get("/v1/stats/routes", tags=["read"], response_model=list[readapi.RouteCount])
    def route_stats(
        _: Annotated[str, Depends(require("read"))],
        bucket: Literal["hour", "day"] = "hour",
        since: datetime | None = None,
        until: datetime | None = None,
        queue: Annotated[str | None, Query(max_length=100)] = None,
    ) -> list[readapi.RouteCount]:
        """Decisions per route per hour or day: the dashboard's time series."""
        return readapi.route_counts(engine, bucket=bucket, since=since, until=until, queue=queue)

    @api.post(
        "/v1/decisions/{source}/{ticket_id:path}/feedback",
        tags=["read"],
        response_model=readapi.FeedbackOut,
        status_code=201,
        responses={404: {}, 409: {}},
    )
    def post_feedback(
        source: SourceP,
        ticket_id: TicketP,
        feedback: FeedbackIn,
        _: Annotated[str, Depends(require("feedback"))],
    ) -> readapi.FeedbackOut:
        """An agent confirms or vetoes a `duplicate` or `suggest` decision (one verdict per
        agent; a second one replaces the first)."""
        result = readapi.save_feedback(
            engine, source, ticket_id, feedback.verdict, feedback.agent, feedback.comment
        )
        if isinstance(result, tuple):
            raise ApiError(*result)
        return result

    # --- operations ------------------------------------------------------------------------

    @api.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["ops"], responses={503: {}})
    def readyz() -> JSONResponse:
        """Readiness: Redis, the database (and its schema) and the embedder configuration."""
        checks = readapi.readiness(settings, engine, client)
        ok = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @api.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def prometheus() -> Response:
        """Prometheus metrics."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    # --- the dashboard page (/dashboard, read token; producer/dashboard.py) -----------------
    mount_dashboard(api)

    return api
