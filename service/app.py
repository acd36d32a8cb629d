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

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal, TypeVar

import anyio
import redis
from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from swagger_ui_bundle import swagger_ui_path

from config.celery_app import create_app as create_celery
from config.settings import Settings
from producer.guards import QueueGate, RateLimiter, RequestShapeGuard, json_depth, token_source
from producer.intake import ClaimPending, Intake
from producer.webhooks import (
    VENDORS,
    IgnoredEvent,
    MissingHeader,
    PayloadError,
    SignatureError,
    adapt,
    verify_signature,
)
from service import queries as readapi
from service.health import Readiness
from service.metrics import Metrics
from service.routers.dashboard import mount_dashboard
from tickets.db import make_engine
from tickets.model import Ticket
from tickets.queue import BrokerUnavailable

logger = logging.getLogger(__name__)

RETRY_AFTER_S = "30"
# Bodies parsed and adapted at once; the rest wait their turn on the event loop, holding no
# thread. Two: the machine's cores, and the GIL lets no more run anyway.
CPU_WORKERS = 2
T = TypeVar("T")
Scope = Literal["ingest", "read", "feedback", "admin"]


class ApiError(Exception):
    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers


# --- request bodies and answers (published in the OpenAPI document) ---------------------------


# An id holds no control character: NUL would otherwise be dropped (two ids colliding) and
# PostgreSQL cannot store it; a tab or a line break would be trimmed the same way.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"


class TicketIn(BaseModel):
    """The canonical ticket. ``received_at`` is set by the service."""

    source: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$", examples=["email"])
    ticket_id: str = Field(min_length=1, max_length=255, pattern=ID_PATTERN)
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


class ReadyOut(BaseModel):
    ready: bool
    reason: str = Field(examples=["ok", "redis unreachable"])


class FeedbackIn(BaseModel):
    verdict: Literal["confirm", "veto"]
    agent: str = Field(min_length=1, max_length=200, pattern=ID_PATTERN)
    # Any text but NUL, which PostgreSQL cannot store.
    comment: str | None = Field(None, max_length=5000, pattern=r"^[^\x00]*$")


def create_api(settings: Settings) -> FastAPI:
    """Build the service; clients (Redis, database, Celery producer) belong to this app."""
    engine: Engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    publisher = create_celery(settings)
    # kombu's Redis sockets have no timeout by default: a Redis that hangs (not down, just
    # silent) would hold a publishing request, and its thread, until it answers again.
    publisher.conf.broker_transport_options = {
        **publisher.conf.broker_transport_options,
        "socket_timeout": 3,
        "socket_connect_timeout": 3,
    }
    intake = Intake(publisher, client, queue=settings.queue, dedupe_ttl_s=settings.dedupe_ttl_s)
    metrics = Metrics(engine, intake, known=(*VENDORS, "api"))
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
        # FastAPI's pages load Swagger UI / ReDoc from a CDN: blank without internet. /docs is
        # served below from the packaged Swagger UI instead; ReDoc is not offered.
        docs_url=None,
        redoc_url=None,
    )
    api.add_middleware(RequestShapeGuard)
    api.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="ticket-triage API",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
        )

    api.state.settings, api.state.engine, api.state.intake = settings, engine, intake
    api.state.gate = gate
    readiness = Readiness(settings)
    api.state.readiness = readiness
    cpu_limiter = anyio.CapacityLimiter(CPU_WORKERS)

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

    @api.exception_handler(readapi.BadQuery)
    async def _bad_query(_: Request, exc: readapi.BadQuery) -> JSONResponse:
        detail = [{"loc": ["query", exc.param], "msg": str(exc), "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @api.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        # The client went away mid-upload: nothing to answer, nothing went wrong here.
        logger.info("client disconnected before its request was read: %s", request.url.path)
        return Response(status_code=400)

    @api.exception_handler(DataError)
    async def _bad_value(_: Request, exc: DataError) -> JSONResponse:
        # The database refused a value (out of range, a character it cannot store): the
        # request can never succeed, so no "retry later". Inputs are validated before this;
        # reaching it means a validation is missing, hence the warning.
        logger.warning("database refused a value: %s", str(exc.orig).splitlines()[0])
        return JSONResponse(
            {"detail": "a value in the request is out of range for the database"},
            status_code=400,
        )

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

    def require(scope: Scope) -> Callable[..., list[str]]:
        """A dependency: the bearer token's scopes, once it is known to hold ``scope``."""

        def check(authorization: Annotated[str | None, Header()] = None) -> list[str]:
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
            return scopes

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
        try:
            # A client that trickles its body holds a connection and a request: it gets
            # TRIAGE_BODY_TIMEOUT_S for the whole body.
            async with asyncio.timeout(settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.max_body_bytes:
                        metrics.rejected(source, "too_large")
                        raise ApiError(413, f"body over {settings.max_body_bytes} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            metrics.rejected(source, "body_timeout")
            raise ApiError(
                408,
                f"body not received within {settings.body_timeout_s:g} s (TRIAGE_BODY_TIMEOUT_S)",
                {"Connection": "close"},
            ) from None
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
        except json.JSONDecodeError as exc:
            metrics.rejected(source, "bad_json")
            raise ApiError(
                400, f"body is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        except UnicodeDecodeError as exc:
            metrics.rejected(source, "bad_json")
            raise ApiError(400, f"body is not valid JSON: {exc}") from None
        except ValueError:
            # Python refuses to read an integer of more than sys.get_int_max_str_digits()
            # (4,300) digits, an attack on int() that is no ticket's business either.
            metrics.rejected(source, "bad_json")
            raise ApiError(400, "body is not valid JSON: a number has too many digits") from None

    def canonical_tickets(raw: bytes) -> list[Ticket]:
        """The tickets of an ingest body, or ApiError naming every problem (CPU: off the loop)."""
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
        if len({t.source for t in tickets}) > 1:
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
        return tickets

    async def off_loop(fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-heavy work (JSON parsing, validation, HTML to text) in a thread of its own
        small pool: the event loop keeps answering (health probes, other requests), and at
        most CPU_WORKERS bodies are worked on at once whatever arrives."""
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=cpu_limiter)

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
        except ClaimPending as exc:
            metrics.rejected(source, "in_progress")
            raise ApiError(503, f"{exc}: retry", {"Retry-After": "1"}) from None
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
        request: Request, scopes: Annotated[list[str], Depends(require("ingest"))]
    ) -> JSONResponse:
        """Queue canonical tickets (one object or a list of up to 1000). The helpdesks'
        sources (zendesk, github, ...) are reserved for their signed webhooks: only a token
        that also has the `admin` scope may use them (migrating a helpdesk's history)."""
        raw = await raw_json_body(request, "api")
        tickets = await off_loop(canonical_tickets, raw)
        source = tickets[0].source
        if source in VENDORS and "admin" not in scopes:
            # Otherwise an ingest token could post the next id of a helpdesk's tickets first,
            # and the genuine signed webhook would be answered "duplicate" and dropped.
            metrics.rejected("api", "reserved_source")
            raise ApiError(
                403,
                f"source {source!r} is reserved for the signed webhook /v1/hooks/{source}; "
                "importing a helpdesk's history needs a token with the 'admin' scope "
                "(or `triage ingest`)",
            )
        return await enqueue(tickets, tickets[0].source, None)

    def vendor_delivery(vendor: str, raw: bytes, headers: Any) -> Any:
        return adapt(vendor, parse_json(raw, vendor), headers, received_at=datetime.now(UTC))

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
            try:
                delivery = await off_loop(vendor_delivery, vendor, raw, request.headers)
            except IgnoredEvent as exc:
                return JSONResponse({"ignored": str(exc)}, status_code=200)
            except MissingHeader as exc:
                metrics.rejected(vendor, "invalid")
                raise ApiError(400, f"{exc.field}: {exc.problem}") from None
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

    SourceP = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
    TicketP = Annotated[str, Path(max_length=255, pattern=ID_PATTERN)]
    QueueQ = Annotated[str | None, Query(max_length=100, pattern=ID_PATTERN)]

    @api.get(
        "/v1/decisions/{source}/{ticket_id:path}",
        tags=["read"],
        response_model=readapi.DecisionOut,
        responses={404: {}},
    )
    def get_decision(
        source: SourceP, ticket_id: TicketP, _: Annotated[list[str], Depends(require("read"))]
    ) -> readapi.DecisionOut:
        """One decision by its ticket key."""
        found = readapi.get_decision(engine, source, ticket_id)
        if isinstance(found, str):
            raise ApiError(404, found)
        return found

    @api.get("/v1/decisions", tags=["read"], response_model=readapi.DecisionPage)
    def list_decisions(
        _: Annotated[list[str], Depends(require("read"))],
        route: Literal["duplicate", "suggest", "manual"] | None = None,
        queue: QueueQ = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[
            str | None, Query(max_length=40, description="`next_cursor` of the previous page")
        ] = None,
    ) -> readapi.DecisionPage:
        """Newest first; filter by route, queue and decision time; keyset-paginated."""
        return readapi.list_decisions(
            engine,
            route=route,
            queue=queue,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

    @api.get("/v1/stats/routes", tags=["read"], response_model=list[readapi.RouteCount])
    def route_stats(
        _: Annotated[list[str], Depends(require("read"))],
        bucket: Literal["hour", "day"] = "hour",
        since: datetime | None = None,
        until: datetime | None = None,
        queue: QueueQ = None,
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
        _: Annotated[list[str], Depends(require("feedback"))],
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
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers. No I/O at all, and on the event loop itself, so it
        answers while Redis or the database hang and every request thread is taken."""
        return {"status": "ok"}

    @api.get("/readyz", tags=["ops"], response_model=ReadyOut, responses={503: {}})
    async def readyz() -> JSONResponse:
        """Readiness for load balancers: Redis, the database (and its schema) and the
        embedder configuration. Only ready or not and a short reason; the detail is
        `/v1/status` (read token). Checked at most every 2 s, each check within 1 s."""
        ready, reason = await readiness.open_answer()
        return JSONResponse({"ready": ready, "reason": reason}, status_code=200 if ready else 503)

    @api.get("/v1/status", tags=["ops"], responses={503: {}})
    async def status(_: Annotated[list[str], Depends(require("read"))]) -> JSONResponse:
        """Every readiness check with its detail (URLs masked): Redis, the database, the
        embedder, the queue, and the workers consuming it (a missing worker does not make
        the service unready: tickets wait in the queue)."""
        answer = await readiness.status()
        return JSONResponse(answer, status_code=200 if answer["ready"] else 503)

    @api.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def prometheus() -> Response:
        """Prometheus metrics."""
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    # --- the published OpenAPI document ---------------------------------------------------
    generated = api.openapi

    def openapi() -> dict[str, Any]:
        # /v1/tickets reads its body itself (one ticket or a list), so FastAPI never sees
        # TicketIn and would leave the document's reference to it dangling.
        schema = generated()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault(
            "TicketIn", TicketIn.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        return schema

    api.openapi = openapi  # type: ignore[method-assign]

    # --- the dashboard page (/dashboard, read token; service/routers/dashboard.py) -----------------
    mount_dashboard(api)

    return api
