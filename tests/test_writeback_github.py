"""Write-back to GitHub issues against a served stand-in of GitHub's REST API
(tests/standins/github.py), on SQLite and PostgreSQL, delivered in this process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from config.settings import Settings
from producer.webhooks import adapt
from tests.conftest import (
    FIXTURES,
    WorkerProcess,
    decisions,
    run_triage,
    tickets_csv,
    wait_for,
)
from tests.standins import Scripted
from tests.standins.github import GitHubStandin
from tests.test_actions_worker import actions_of
from tests.writeback import SECRET_BODY, WriteBackEnv
from tests.writeback import writeback as writeback  # the fixture
from tickets import outbox
from tickets.marks import marked_action

NOW = datetime.now(UTC)
TOKEN = "ghp_standin0123456789abcdefABCDEF"


@pytest.fixture
def github() -> Iterator[tuple[GitHubStandin, str]]:
    standin = GitHubStandin(TOKEN)
    with standin.served() as url:
        yield standin, url


@pytest.fixture
def env(
    github: tuple[GitHubStandin, str], writeback: Callable[..., WriteBackEnv]
) -> Callable[..., WriteBackEnv]:
    _, url = github

    def make(**overrides: object) -> WriteBackEnv:
        return writeback(github_api_url=url, github_api_token=TOKEN, **overrides)

    return make


def only(rows: list[outbox.ActionRow]) -> outbox.ActionRow:
    assert len(rows) == 1, rows
    return rows[0]


def test_a_duplicate_gets_the_label_and_one_comment_naming_its_canonical_issue(
    github: tuple[GitHubStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, url = github
    standin.add_issue("acme/app#1")
    new = standin.add_issue("acme/app#2", labels=("bug",))
    wb = env()
    wb.store_ticket("github", "acme/app#1", "App crashes right after login")
    action = only(wb.decide("github", "acme/app#2", "duplicate", [("acme/app#1", 0.913)]))
    assert (action.kind, action.target) == ("helpdesk", "github")

    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert new.labels == ["bug", "triage-duplicate"]  # added, the agent's label kept
    (comment,) = new.comments
    body = comment["body"]
    assert "App crashes right after login" in body
    assert f"{url}/acme/app/issues/1" in body
    assert "0.91" in body
    assert "Automated comment by ticket-triage" in body  # public on GitHub: it says so
    assert body.endswith(f"<!-- ticket-triage:{action.action_id} -->")
    assert SECRET_BODY not in body
    sent = standin.calls_to("POST", r"/comments$")[0]
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["x-github-api-version"] == "2022-11-28"
    assert wb.action(action.action_id).status == outbox.DELIVERED


def test_a_suggestion_lists_the_matches_subjects_links_and_scores(
    github: tuple[GitHubStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, url = github
    new = standin.add_issue("acme/app#9")
    wb = env()
    wb.store_ticket("github", "acme/app#3", "Login button does nothing on Android")
    wb.store_ticket("github", "acme/app#4", "Password reset mail never arrives")
    action = only(
        wb.decide("github", "acme/app#9", "suggest", [("acme/app#3", 0.78), ("acme/app#4", 0.71)])
    )
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert new.labels == ["triage-similar"]
    body = new.comments[0]["body"]
    first, second = body.index("Login button does nothing"), body.index("Password reset mail")
    assert first < second  # ranked order
    assert f"{url}/acme/app/issues/3" in body and "0.78" in body and "0.71" in body
    assert SECRET_BODY not in body


def test_manual_writes_nothing_unless_a_manual_tag_is_set(
    github: tuple[GitHubStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = github
    assert env().decide("github", "acme/app#5", "manual") == []
    issue = standin.add_issue("acme/app#6")
    wb = env(actions_manual_tag="triage-manual")
    action = only(wb.decide("github", "acme/app#6", "manual"))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert issue.labels == ["triage-manual"] and issue.comments == []


def test_labels_only_when_comments_are_off(
    github: tuple[GitHubStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = github
    issue = standin.add_issue("acme/app#7")
    wb = env(github_comment=False)
    wb.store_ticket("github", "acme/app#1", "Crash")
    action = only(wb.decide("github", "acme/app#7", "duplicate", [("acme/app#1", 0.95)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert issue.labels == ["triage-duplicate"] and issue.comments == []
    assert standin.calls_to("GET", r"/comments$") == []


def test_a_retry_after_a_failed_label_posts_no_second_comment(
    github: tuple[GitHubStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    """The comment went through and the label call failed (as when the worker dies between
    them): the next attempt finds the marker, past a first page of others' comments, and only
    adds the label."""
    standin, _ = github
    issue = standin.add_issue("acme/app#8", comments=130)
    wb = env()
    wb.store_ticket("github", "acme/app#1", "Crash")
    action = only(wb.decide("github", "acme/app#8", "duplicate", [("acme/app#1", 0.95)]))
    standin.fail_next(Scripted(502, {"message": "Server Error"}, method="POST", path=r"/labels$"))
    first = wb.deliverer.deliver(action.action_id)
    assert (first.status, first.http_status) == (outbox.FAILED, 502)
    assert len(issue.comments) == 131 and issue.labels == []

    wb.make_due(action.action_id)
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    mine = [c for c in issue.comments if action.action_id in c["body"]]
    assert len(mine) == 1 and len(issue.comments) == 131
    assert issue.labels == ["triage-duplicate"]
    pages = [c.query for c in standin.calls_to("GET", r"/comments$")]
    assert any("page=2" in q for q in pages)  # the marker was on the second page


def test_githubs_403_rate_limit_waits_until_the_reset_then_delivers(
    github: tuple[GitHubStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = github
    issue = standin.add_issue("acme/app#10")
    wb = env()
    action = only(wb.decide("github", "acme/app#10", "suggest", [("acme/app#1", 0.8)]))
    reset = int(time.time()) + 120
    standin.fail_next(
        Scripted(
            403,
            {"message": "API rate limit exceeded for user ID 1.", "documentation_url": "x"},
            {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)},
        )
    )
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status) == (outbox.FAILED, 429)
    row = wb.action(action.action_id)
    assert row.next_attempt_at.replace(tzinfo=UTC).timestamp() >= reset - 2
    assert "API rate limit exceeded" in (row.last_error or "")
    wb.make_due(action.action_id)
    assert wb.deliverer.holds is not None
    wb.deliverer.holds.redis.delete(wb.deliverer.holds._key("github"))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert len(issue.comments) == 1


def test_a_secondary_rate_limit_without_headers_waits_a_minute(
    github: tuple[GitHubStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = github
    standin.add_issue("acme/app#11")
    wb = env()
    action = only(wb.decide("github", "acme/app#11", "suggest", [("acme/app#1", 0.8)]))
    standin.fail_next(
        Scripted(403, {"message": "You have exceeded a secondary rate limit. Please wait."})
    )
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.wait_s) == (outbox.FAILED, 60.0)


@pytest.mark.parametrize(
    ("token", "ticket", "status", "message"),
    [
        ("ghp_wrong000000000000000000000000", "acme/app#12", 401, "Bad credentials"),
        (TOKEN, "acme/app#404", 404, "Not Found"),
        (TOKEN, "acme/app#12", 403, "Resource not accessible by personal access token"),
    ],
)
def test_a_refusal_is_dead_at_once_with_githubs_answer(
    github: tuple[GitHubStandin, str],
    writeback: Callable[..., WriteBackEnv],
    token: str,
    ticket: str,
    status: int,
    message: str,
) -> None:
    standin, url = github
    standin.add_issue("acme/app#12")
    if status == 403:  # a permission refusal: no rate-limit header, no secondary-limit text
        standin.fail_next(Scripted(403, {"message": message}))
    wb = writeback(github_api_url=url, github_api_token=token)
    action = only(wb.decide("github", ticket, "suggest", [("acme/app#1", 0.8)]))
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status) == (outbox.DEAD, status)
    assert message in (wb.action(action.action_id).last_error or "")


# --- through a real worker ----------------------------------------------------------------


def test_a_worker_writes_back_to_github_and_the_echo_is_its_own(
    github: tuple[GitHubStandin, str],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """GitHub issues decided by a real worker: the later of two twins gets the duplicate label
    and one comment naming the earlier; GitHub's webhook for that very comment and label is
    recognised as the product's own (no re-embed, no feedback); dry-run sends nothing."""
    standin, url = github
    for n in (1, 2, 3):
        standin.add_issue(f"acme/app#{n}")
    settings = make_settings(
        queue=queue_name,
        database_url=sqlite_url,
        github_api_url=url,
        github_api_token=TOKEN,
        actions_sweep_s=0.5,
    )
    start_worker(settings)
    first = [("acme/app#1", "App crashes after login", "The app closes as soon as I log in.")]
    run = ["ingest", "--source", "github", "--quiet", "--per-message", "1"]
    assert run_triage(settings, *run, str(tickets_csv(tmp_path / "a.csv", first))).returncode == 0
    wait_for(lambda: "acme/app#1" in decisions(sqlite_url), 90, "the first decision")
    later = [
        ("acme/app#2", "App crashes after log in", "The app closes as soon as I log in!"),
        ("acme/app#3", "Invoice PDF has the wrong VAT", "The VAT on my invoice is 19 %, not 7 %."),
    ]
    assert run_triage(settings, *run, str(tickets_csv(tmp_path / "b.csv", later))).returncode == 0
    wait_for(lambda: len(decisions(sqlite_url)) == 3, 90, "three decisions")
    wait_for(lambda: standin.issues["acme/app#2"].labels, 60, "the twin's write-back")
    assert decisions(sqlite_url)["acme/app#2"].route == "duplicate"
    twin = standin.issues["acme/app#2"]
    assert twin.labels == ["triage-duplicate"]
    (comment,) = twin.comments
    assert "App crashes after login" in comment["body"]
    assert f"{url}/acme/app/issues/1" in comment["body"]
    assert "The app closes" not in comment["body"]  # never a ticket's body

    # GitHub's webhooks for the product's own comment and label change nothing.
    echo = json.loads((FIXTURES / "webhooks" / "github_issues_opened.json").read_text())
    echo["action"] = "created"
    echo["issue"]["number"] = 2
    echo["repository"]["full_name"] = "acme/app"
    echo["comment"] = {"id": 9, "body": comment["body"], "created_at": "2026-01-02T03:00:00Z"}
    delivery = adapt(
        "github",
        echo,
        {"X-GitHub-Event": "issue_comment", "X-GitHub-Delivery": "d-1"},
        received_at=NOW,
    )
    assert delivery.update is not None and delivery.update.ticket_id == "acme/app#2"
    (action,) = [a for a in actions_of(sqlite_url) if a.ticket_id == "acme/app#2"]
    assert marked_action(delivery.update.note) == action.action_id  # the loop guard's key
    assert action.status == outbox.DELIVERED
    # The unrelated ticket was routed manual: nothing written to it.
    assert standin.issues["acme/app#3"].comments == []
    assert standin.issues["acme/app#3"].labels == []


def test_dry_run_records_the_write_back_and_sends_nothing(
    github: tuple[GitHubStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = github
    standin.add_issue("acme/app#13")
    wb = env(actions_dry_run=True)
    action = only(wb.decide("github", "acme/app#13", "duplicate", [("acme/app#1", 0.93)]))
    assert (action.status, action.kind, action.target) == (outbox.DRY_RUN, "helpdesk", "github")
    assert action.payload["route"] == "duplicate"
    assert wb.deliverer.deliver(action.action_id).status == "skipped"
    assert standin.calls == []
    # What would be written, rendered by `triage actions`.
    wb.store_ticket("github", "acme/app#1", "Checkout button greyed out")
    out = run_triage(wb.settings, "actions", "--status", "dry-run", "--format", "json")
    assert out.returncode == 0, out.stderr
    (listed,) = json.loads(out.stdout)
    assert listed["action_id"] == action.action_id
    assert listed["writes"]["tags"] == ["triage-duplicate"]
    assert "Checkout button greyed out" in listed["writes"]["note"]
    assert standin.calls == []
