"""Write-back to a helpdesk through a vendor outage, a storm of rate limits and SIGKILLs of
the delivering worker, against the GitHub stand-in (tests/standins/github.py) behind a TCP
proxy that the outage cuts.

Every decision's write-back must be delivered once its vendor answers again, and the
helpdesk must see each note once: a re-attempt after a kill (the comment may have been
created just before the kill, or its answer lost in the cut) finds the marker and posts no
second one. Every decision gets an action and nearly every one a note: the suggest
threshold is -1, so each ticket with any earlier one is routed ``suggest`` or ``duplicate``
(a comment and a label); the first is ``manual`` (``TRIAGE_ACTIONS_MANUAL_TAG``: a label).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from config.settings import Settings
from tests.faults.conftest import FaultEnv, Supervisor
from tests.faults.harness import (
    actions_settled,
    make_tickets,
    report,
    scale,
    tally,
    wait_until,
)
from tests.standins import Scripted
from tests.standins.github import GitHubStandin
from tickets.db import DecisionRow
from tickets.outbox import ActionRow

N_DECISIONS, N_KILLS, DOWN_S, N_RATE_LIMITED = scale((150, 3, 15, 20), (1000, 10, 60, 100))
# After the last fault the backlog drains at the stand-in's pace: three calls of 0.25 s per
# action, four at a time per worker, about 190 s for the full size's 1,000.
RECOVERY_BOUND_S = scale(120, 300)
TOKEN = "ghp_faults0123456789abcdefABCDEF"


@pytest.mark.timeout(scale(600, 1800))
def test_vendor_outage_rate_limits_and_kills_post_each_note_once(
    fault_env: FaultEnv, supervise: Callable[[Settings], Supervisor]
) -> None:
    standin = GitHubStandin(TOKEN)
    standin.delay_s = 0.25  # a kill lands after the vendor made the change, before its answer
    tickets = [
        t.model_copy(update={"source": "github", "ticket_id": f"acme/app#{i + 1}"})
        for i, t in enumerate(make_tickets(N_DECISIONS))
    ]
    for t in tickets:
        standin.add_issue(t.ticket_id)
    # The storm: GitHub's rate limit on the first calls, each asking for a second's wait.
    standin.fail_next(
        *(
            Scripted(
                429,
                {"message": "You have exceeded a secondary rate limit."},
                {"retry-after": "1"},
            )
            for _ in range(N_RATE_LIMITED)
        )
    )
    with standin.served() as url:
        proxy = fault_env.proxy(int(url.rsplit(":", 1)[1]))
        settings = fault_env.settings(
            github_api_url=f"http://127.0.0.1:{proxy.port}",
            github_api_token=TOKEN,
            actions_manual_tag="triage-manual",
            suggest_threshold=-1.0,
            actions_timeout_s=2,
            actions_sweep_s=0.5,
            actions_backoff_max_s=4,
            actions_concurrency=scale(2, 4),
        )
        sent = fault_env.publish(settings, tickets)
        supervisor = supervise(settings)

        def commented() -> int:
            return len(standin.calls_to("POST", r"/comments$"))

        wait_until(lambda: commented() > 0, 180, "the first write-back")
        started = time.monotonic()
        # Each kill comes 50 ms after a comment was posted: the comment is made and its
        # answer still on the way, so the next attempt must find it rather than post again.
        kills, in_flight_kills = supervisor.kill_through(
            N_KILLS, commented, N_DECISIONS // (3 * N_KILLS), (proxy.cut, proxy.restore, DOWN_S)
        )
        fault_end = time.monotonic()

        wait_until(
            lambda: actions_settled(fault_env.engine, N_DECISIONS),
            RECOVERY_BOUND_S + 60,
            "every write-back delivered",
        )
        recovery_s = time.monotonic() - fault_end

    with Session(fault_env.engine) as session:
        rows = {a.ticket_id: a for a in session.scalars(select(ActionRow))}
        routes = dict(session.execute(select(DecisionRow.ticket_id, DecisionRow.route)).all())
    result = tally(fault_env.engine, sent)
    notes = {
        ticket_id: [c for c in issue.comments if rows[ticket_id].action_id in c["body"]]
        for ticket_id, issue in standin.issues.items()
    }
    tag = {"duplicate": "triage-duplicate", "suggest": "triage-similar", "manual": "triage-manual"}
    comment_posts = len(standin.calls_to("POST", r"/comments$"))
    report(
        "write-back (GitHub stand-in): vendor down, rate-limit storm, worker SIGKILL",
        result,
        recovery_s,
        decisions=N_DECISIONS,
        kills=kills,
        kills_mid_delivery=in_flight_kills,
        outage_s=DOWN_S,
        rate_limited_answers=N_RATE_LIMITED,
        notes=sum(len(n) for n in notes.values()),
        comment_posts_reaching_the_vendor=comment_posts,
        max_attempts=max(r.attempts for r in rows.values()),
        total_s=round(time.monotonic() - started, 1),
    )
    assert result.decided == N_DECISIONS and result.lost == 0, result
    assert len(rows) == N_DECISIONS and {r.status for r in rows.values()} == {"delivered"}
    for ticket_id, issue in standin.issues.items():
        route = routes[ticket_id]
        assert issue.labels == [tag[route]], (ticket_id, route, issue.labels)
        assert len(notes[ticket_id]) == (0 if route == "manual" else 1), (ticket_id, route)
    assert any(route == "duplicate" for route in routes.values()), "no note was tested"
    assert recovery_s < RECOVERY_BOUND_S, f"recovery took {recovery_s:.0f} s"
    assert any(r.attempts > 1 for r in rows.values()), "no attempt failed: nothing was tested"
