"""The agents' verdicts as labels: one per judged decision.

Read by `triage calibrate --feedback` (quality/calibrate.py turns them into arrays) and by the
dashboard's review precision (service/queries.py), so the page shows the very numbers the
calibration learns from. Plain SQL and Python: no numpy, no optional extra.

Several agents may judge one decision: the majority verdict labels it, a tie leaves it out
(it says nothing about where the threshold should be). The score is the decision's, or the one
recorded with the feedback when the decision row is gone; the route likewise.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, select
from sqlalchemy.orm import Session

from tickets.db import DecisionRow, FeedbackRow, dialect_insert

# The routes an agent's verdict applies to: the ones that name a match.
JUDGED_ROUTES = ("duplicate", "suggest")


def record_verdict(
    session: Session,
    decision: DecisionRow,
    *,
    verdict: str,
    agent: str,
    comment: str | None,
    now: datetime,
) -> None:
    """One agent's verdict on a decision, in the caller's transaction: a later verdict of
    the same agent replaces the earlier one (an agent who changes their mind)."""
    values = {
        "source": decision.source,
        "ticket_id": decision.ticket_id,
        "verdict": verdict,
        "agent": agent,
        "comment": comment,
        "route": decision.route,
        "score": decision.score,
        "created_at": now,
    }
    insert = dialect_insert(session.get_bind().dialect.name)
    stmt = insert(FeedbackRow.__table__).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["source", "ticket_id", "agent"],
        set_={k: stmt.excluded[k] for k in ("verdict", "comment", "route", "score", "created_at")},
    )
    session.execute(stmt)


@dataclass(frozen=True)
class Judged:
    """One decision and the label its verdicts give it."""

    source: str
    ticket_id: str
    score: float
    confirmed: bool
    queue: str | None
    model: str | None
    route: str | None


@dataclass(frozen=True)
class Verdicts:
    judged: tuple[Judged, ...]
    verdicts: int  # feedback rows read
    conflicting: int  # decisions with as many confirms as vetoes: left out
    unscored: int  # decisions without a score: left out


def tally(rows: Iterable[Sequence[Any]]) -> Verdicts:
    """Rows of (source, ticket_id, verdict, feedback score, decision score, queue, model),
    optionally followed by (feedback route, decision route), in any order of decisions."""
    votes: dict[tuple[str, str], list[int]] = {}
    info: dict[tuple[str, str], tuple[float | None, str | None, str | None, str | None]] = {}
    n_rows = 0
    for row in rows:
        source, ticket_id, verdict, fb_score, dec_score, queue, model = row[:7]
        fb_route = row[7] if len(row) > 7 else None
        dec_route = row[8] if len(row) > 8 else None
        n_rows += 1
        key = (source, ticket_id)
        counts = votes.setdefault(key, [0, 0])
        # the API's vocabulary (service/queries.py Verdict): confirm or veto
        if verdict == "confirm":
            counts[0] += 1
        elif verdict == "veto":
            counts[1] += 1
        score = dec_score if dec_score is not None else fb_score
        route = dec_route if dec_route is not None else fb_route
        if key not in info or info[key][0] is None:
            info[key] = (None if score is None else float(score), queue, model, route)
    judged: list[Judged] = []
    conflicting = unscored = 0
    for key, (confirms, vetoes) in votes.items():
        if confirms == vetoes:
            if confirms:  # 0 - 0 would be verdicts this code does not know: not a conflict
                conflicting += 1
            continue
        score, queue, model, route = info[key]
        if score is None:
            unscored += 1
            continue
        judged.append(Judged(*key, score, confirms > vetoes, queue, model, route))
    return Verdicts(tuple(judged), n_rows, conflicting, unscored)


def load_verdicts(engine: Engine) -> Verdicts:
    """Agent feedback (``triage_feedback``) joined to its decision (``triage_decisions``)."""
    stmt = (
        select(
            FeedbackRow.source,
            FeedbackRow.ticket_id,
            FeedbackRow.verdict,
            FeedbackRow.score,
            DecisionRow.score,
            DecisionRow.queue,
            DecisionRow.model,
            FeedbackRow.route,
            DecisionRow.route,
        )
        .outerjoin(
            DecisionRow,
            and_(
                DecisionRow.source == FeedbackRow.source,
                DecisionRow.ticket_id == FeedbackRow.ticket_id,
            ),
        )
        .order_by(FeedbackRow.source, FeedbackRow.ticket_id, FeedbackRow.id)
    )
    with Session(engine) as session:
        return tally(session.execute(stmt))
