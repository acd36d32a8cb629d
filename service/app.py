"""`triage serve`: the HTTP face of ticket-triage, assembled from one router per area.

- ``POST /v1/tickets``                       canonical ticket JSON, one or a list (scope ``ingest``)
- ``POST /v1/hooks/{zendesk,github,jira,freshdesk,zammad,helpscout}``  signed vendor webhooks
- ``GET  /v1/decisions/{source}/{ticket_id}``  one decision (scope ``read``)
- ``GET  /v1/decisions``                      paginated list by route, queue, time (``read``)
- ``GET  /v1/stats/routes``                   counts per route per hour/day (``read``)
- ``POST /v1/decisions/{source}/{ticket_id}/feedback``  confirm / veto (scope ``feedback``)
- ``GET  /healthz``, ``GET /readyz``, ``GET /v1/status``, ``GET /metrics``, ``GET /docs``
- ``/dashboard`` and its pages (read token or session cookie)

Every answer is JSON with a ``detail`` that names the problem: 400/422 for malformed input
(the field named), 401 for a missing or wrong signature or token, 403 for a token without
the scope, 413 for a body over TRIAGE_MAX_BODY_BYTES, 415 for a content type other than
JSON, 429 with Retry-After over a source's rate limit (TRIAGE_RATE_LIMIT_PER_S), 503 with
Retry-After when Redis is unreachable or the backlog is at TRIAGE_MAX_QUEUE_DEPTH. 202 only
once the ticket is on the queue. Never a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.requests import ClientDisconnect
from swagger_ui_bundle import swagger_ui_path

from config.settings import Settings
from producer.guards import RequestShapeGuard
from service.deps import RETRY_AFTER_S, ApiError, Clients
from service.queries import BadQuery
from service.routers import dashboard, decisions, ops, tickets, webhooks

logger = logging.getLogger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """Build the service; its clients (Redis, database, Celery producer) belong to this app
    and are released when it shuts down."""
    clients = Clients.build(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        clients.release()

    app = FastAPI(
        title="ticket-triage",
        version="0.1.0",
        description="Signed helpdesk webhooks in; duplicate / suggest / manual decisions out.",
        # FastAPI's pages load Swagger UI / ReDoc from a CDN: blank without internet. /docs is
        # served from the packaged Swagger UI instead (routers/ops.py); ReDoc is not offered.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.clients = clients
    app.add_middleware(RequestShapeGuard)
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    app.mount("/dashboard/static", StaticFiles(directory=dashboard.STATIC), name="dashboard-static")
    for router in (tickets.router, webhooks.router, decisions.router, ops.router):
        app.include_router(router)
    app.include_router(dashboard.router)
    dashboard.redact_access_log()
    _add_error_handlers(app)
    _publish_ticket_schema(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error a JSON answer naming the problem."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(BadQuery)
    async def _bad_query(_: Request, exc: BadQuery) -> JSONResponse:
        detail = [{"loc": ["query", exc.param], "msg": str(exc), "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        # The client went away mid-upload: nothing to answer, nothing went wrong here.
        logger.info("client disconnected before its request was read: %s", request.url.path)
        return Response(status_code=400)

    @app.exception_handler(DataError)
    async def _bad_value(_: Request, exc: DataError) -> JSONResponse:
        # The database refused a value (out of range, a character it cannot store): the
        # request can never succeed, so no "retry later". Inputs are validated before this;
        # reaching it means a validation is missing, hence the warning.
        logger.warning("database refused a value: %s", str(exc.orig).splitlines()[0])
        return JSONResponse(
            {"detail": "a value in the request is out of range for the database"},
            status_code=400,
        )

    @app.exception_handler(SQLAlchemyError)
    async def _db_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        logger.error("database error: %s", exc)
        return JSONResponse(
            {"detail": "database unavailable"},
            status_code=503,
            headers={"Retry-After": RETRY_AFTER_S},
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error")
        return JSONResponse({"detail": "internal error"}, status_code=500)


def _publish_ticket_schema(app: FastAPI) -> None:
    """/v1/tickets reads its body itself (one ticket or a list), so FastAPI never sees
    TicketIn and would leave the document's reference to it dangling: add it."""
    generated = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generated()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault(
            "TicketIn",
            tickets.TicketIn.model_json_schema(ref_template="#/components/schemas/{model}"),
        )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
