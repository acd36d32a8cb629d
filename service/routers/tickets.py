"""``POST /v1/tickets``: canonical ticket JSON, one object or a list (scope ``ingest``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from producer.webhooks import VENDORS
from service.deps import ApiError, Ingest, IngestDep, require
from tickets.model import Ticket

router = APIRouter()

# An id holds no control character: NUL would otherwise be dropped (two ids colliding) and
# PostgreSQL cannot store it; a tab or a line break would be trimmed the same way.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
MAX_TICKETS = 1000


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
    status: Literal["accepted", "duplicate", "update"]


class IngestOut(BaseModel):
    tickets: list[AcceptedOut]


def _body_error(msg: str) -> ApiError:
    return ApiError(422, [{"loc": ["body"], "msg": msg, "type": "value_error"}])


def canonical_tickets(ingest: Ingest, raw: bytes) -> list[Ticket]:
    """The tickets of an ingest body, or ApiError naming every problem (CPU: off the loop)."""
    payload = ingest.parse_json(raw, "api")
    items = payload if isinstance(payload, list) else [payload]
    if not items or len(items) > MAX_TICKETS:
        raise _body_error(f"expected 1 to {MAX_TICKETS} tickets")
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
        ingest.metrics.rejected("api", "invalid")
        raise ApiError(422, errors)
    if len({t.source for t in tickets}) > 1:
        raise _body_error("all tickets of one request must share a source")
    return tickets


@router.post(
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
                                "maxItems": MAX_TICKETS,
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
    request: Request,
    ingest: IngestDep,
    scopes: Annotated[list[str], Depends(require("ingest"))],
) -> JSONResponse:
    """Queue canonical tickets (one object or a list of up to 1000). The helpdesks'
    sources (zendesk, github, ...) are reserved for their signed webhooks: only a token
    that also has the `admin` scope may use them (migrating a helpdesk's history)."""
    raw = await ingest.raw_json_body(request, "api")
    tickets = await ingest.off_loop(canonical_tickets, ingest, raw)
    source = tickets[0].source
    if source in VENDORS and "admin" not in scopes:
        # Otherwise an ingest token could post the next id of a helpdesk's tickets first,
        # and the genuine signed webhook would be answered "duplicate" and dropped.
        ingest.metrics.rejected("api", "reserved_source")
        raise ApiError(
            403,
            f"source {source!r} is reserved for the signed webhook /v1/hooks/{source}; "
            "importing a helpdesk's history needs a token with the 'admin' scope "
            "(or `triage ingest`)",
        )
    return await ingest.enqueue(tickets, source, None)
