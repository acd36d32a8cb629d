"""The read API: decisions by ticket, by route / queue / time, counts per route, and the
agents' feedback on a decision. Scope ``read`` (feedback: ``feedback``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from service import queries
from service.deps import ApiError, EngineDep, ReadScope, require
from service.routers.tickets import ID_PATTERN

router = APIRouter(tags=["read"])

SourceP = Annotated[str, Path(max_length=64, pattern=ID_PATTERN)]
TicketP = Annotated[str, Path(max_length=255, pattern=ID_PATTERN)]
QueueQ = Annotated[str | None, Query(max_length=100, pattern=ID_PATTERN)]


class FeedbackIn(BaseModel):
    verdict: queries.Verdict
    agent: str = Field(min_length=1, max_length=200, pattern=ID_PATTERN)
    # Any text but NUL, which PostgreSQL cannot store.
    comment: str | None = Field(None, max_length=5000, pattern=r"^[^\x00]*$")


@router.get(
    "/v1/decisions/{source}/{ticket_id:path}",
    response_model=queries.DecisionOut,
    responses={404: {}},
)
def get_decision(
    source: SourceP, ticket_id: TicketP, _: ReadScope, engine: EngineDep
) -> queries.DecisionOut:
    """One decision by its ticket key."""
    found = queries.get_decision(engine, source, ticket_id)
    if isinstance(found, str):
        raise ApiError(404, found)
    return found


@router.get("/v1/decisions", response_model=queries.DecisionPage)
def list_decisions(
    _: ReadScope,
    engine: EngineDep,
    route: Literal["duplicate", "suggest", "manual"] | None = None,
    queue: QueueQ = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=40, description="`next_cursor` of the previous page")
    ] = None,
) -> queries.DecisionPage:
    """Newest first; filter by route, queue and decision time; keyset-paginated."""
    return queries.list_decisions(
        engine, route=route, queue=queue, since=since, until=until, limit=limit, cursor=cursor
    )


@router.get("/v1/stats/routes", response_model=list[queries.RouteCount])
def route_stats(
    _: ReadScope,
    engine: EngineDep,
    bucket: Literal["hour", "day"] = "hour",
    since: datetime | None = None,
    until: datetime | None = None,
    queue: QueueQ = None,
) -> list[queries.RouteCount]:
    """Decisions per route per hour or day: the dashboard's time series."""
    return queries.route_counts(engine, bucket=bucket, since=since, until=until, queue=queue)


@router.post(
    "/v1/decisions/{source}/{ticket_id:path}/feedback",
    response_model=queries.FeedbackOut,
    status_code=201,
    responses={404: {}, 409: {}},
)
def post_feedback(
    source: SourceP,
    ticket_id: TicketP,
    feedback: FeedbackIn,
    _: Annotated[list[str], Depends(require("feedback"))],
    engine: EngineDep,
) -> queries.FeedbackOut:
    """An agent confirms or vetoes a `duplicate` or `suggest` decision (one verdict per
    agent; a second one replaces the first)."""
    result = queries.save_feedback(
        engine, source, ticket_id, feedback.verdict, feedback.agent, feedback.comment
    )
    if isinstance(result, tuple):
        raise ApiError(*result)
    return result
