"""A decision as the outside world sees it: the read API's body (``GET /v1/decisions/...``)
and the body of the signed outbound webhook, one serialisation for both."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class Match(BaseModel):
    source: str
    ticket_id: str
    score: float = Field(description="cosine similarity to the decided ticket")
    fused_score: float | None = Field(
        None,
        description="dense + BM25 score that ranked it (hybrid ranking only); orders this "
        "decision's matches, not comparable across decisions",
    )


class DecisionOut(BaseModel):
    source: str
    ticket_id: str
    route: Literal["duplicate", "suggest", "manual"] = Field(
        description="the thresholds' rule applied to score"
    )
    score: float | None = Field(
        description="cosine similarity of the matched ticket; null when nothing was stored yet"
    )
    matched_source: str | None
    matched_ticket_id: str | None = Field(description="the first of matches")
    canonical_source: str
    canonical_ticket_id: str
    matches: list[Match] = Field(description="the similar tickets, in ranked_by order")
    ranked_by: Literal["hybrid", "cosine"] | None = Field(
        description="what ordered matches: hybrid (dense + BM25 fusion) or cosine alone; "
        "null for decisions made before it was recorded"
    )
    fused_score: float | None = Field(
        description="the matched ticket's fused score under hybrid ranking"
    )
    model: str
    duplicate_threshold: float
    suggest_threshold: float
    queue: str | None
    subject: str | None
    received_at: datetime
    decided_at: datetime
    latency_ms: int | None
    redecided_at: datetime | None = Field(
        None,
        description="when an edit of the ticket last re-decided it (TRIAGE_REDECIDE_ON_EDIT); "
        "null if it never was",
    )


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was written as UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def decision_out(row: Any) -> DecisionOut:
    """The decision of a ``triage_decisions`` row, or of the values the worker is about to
    insert as one (a mapping of its columns)."""

    def get(column: str) -> Any:
        # A decision about to be inserted has no re-decision time yet.
        return row.get(column) if isinstance(row, Mapping) else getattr(row, column)

    times = ("received_at", "decided_at", "redecided_at")
    return DecisionOut.model_validate(
        {
            **{c: get(c) for c in DecisionOut.model_fields if c not in times},
            **{c: None if get(c) is None else as_utc(get(c)) for c in times},
        }
    )
