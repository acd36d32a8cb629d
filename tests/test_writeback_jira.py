"""Write-back to Jira against a served stand-in of its REST API v2 (tests/standins/jira.py),
on SQLite and PostgreSQL, delivered in this process."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest

from tests.standins import Scripted
from tests.standins.jira import JiraStandin
from tests.writeback import SECRET_BODY, WriteBackEnv
from tests.writeback import writeback as writeback  # the fixture
from tickets import outbox
from tickets.marks import marked_action
from tickets.outbox import ActionRow

EMAIL, TOKEN = "triage-bot@example.com", "ATATT3xFfGF0standin0123456789"


@pytest.fixture
def jira() -> Iterator[tuple[JiraStandin, str]]:
    standin = JiraStandin(EMAIL, TOKEN)
    with standin.served() as url:
        yield standin, url


@pytest.fixture
def env(
    jira: tuple[JiraStandin, str], writeback: Callable[..., WriteBackEnv]
) -> Callable[..., WriteBackEnv]:
    _, url = jira

    def make(**overrides: object) -> WriteBackEnv:
        settings = {"jira_api_url": url, "jira_email": EMAIL, "jira_api_token": TOKEN}
        return writeback(**(settings | overrides))

    return make


def only(rows: list[ActionRow]) -> ActionRow:
    assert len(rows) == 1, rows
    return rows[0]


def test_a_duplicate_gets_the_label_an_internal_comment_and_one_duplicate_link(
    jira: tuple[JiraStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, url = jira
    canonical = standin.add_issue("SUP-1")
    new = standin.add_issue("SUP-7", labels=("customer",))
    wb = env()
    wb.store_ticket("jira", "SUP-1", "Export to CSV times out for large projects")
    action = only(wb.decide("jira", "SUP-7", "duplicate", [("SUP-1", 0.951)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED

    assert new.labels == ["customer", "triage-duplicate"]
    (comment,) = new.comments
    assert comment["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}]
    assert "Export to CSV times out" in comment["body"] and f"{url}/browse/SUP-1" in comment["body"]
    assert "<!--" not in comment["body"]  # wiki markup would show a comment as text
    assert marked_action(comment["body"]) == action.action_id
    assert SECRET_BODY not in comment["body"]
    assert [(x["type"]["outward"], x["outwardIssue"]["key"]) for x in new.links] == [
        ("duplicates", "SUP-1")
    ]
    assert [x["inwardIssue"]["key"] for x in canonical.links] == ["SUP-7"]
    sent = standin.calls_to("POST", r"/comment$")[0]
    expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
    assert sent.headers["authorization"] == expected

    # Sent again (a redrive, or a kill after the last call): nothing is added twice.
    wb.make_due(action.action_id)
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert len(new.comments) == 1 and len(new.links) == 1 and len(canonical.links) == 1
    assert new.labels == ["customer", "triage-duplicate"]


def test_a_suggestion_comments_and_labels_without_a_link(
    jira: tuple[JiraStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = jira
    new = standin.add_issue("SUP-9")
    wb = env()
    wb.store_ticket("jira", "SUP-2", "SSO login loops back to the start page")
    action = only(wb.decide("jira", "SUP-9", "suggest", [("SUP-2", 0.79)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert new.labels == ["triage-similar"] and new.links == []
    assert "SSO login loops" in new.comments[0]["body"] and "0.79" in new.comments[0]["body"]
    assert standin.calls_to("POST", r"/issueLink$") == []


def test_a_comment_whose_answer_was_lost_is_found_on_a_later_page(
    jira: tuple[JiraStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = jira
    new = standin.add_issue("SUP-11", comments=150)
    wb = env()
    action = only(wb.decide("jira", "SUP-11", "suggest", [("SUP-3", 0.8)]))
    standin.fail_next(Scripted(500, None, method="POST", path=r"/comment$", after=True))
    assert wb.deliverer.deliver(action.action_id).status == outbox.FAILED
    wb.make_due(action.action_id)
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    mine = [c for c in new.comments if marked_action(c["body"]) == action.action_id]
    assert len(mine) == 1 and len(new.comments) == 151
    starts = [c.query for c in standin.calls_to("GET", r"/comment$")]
    assert any("startAt=100" in q for q in starts)


def test_a_server_personal_access_token_is_sent_as_bearer(
    jira: tuple[JiraStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = jira
    standin.add_issue("SUP-12")
    wb = env(jira_email=None)
    action = only(wb.decide("jira", "SUP-12", "suggest", [("SUP-3", 0.8)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert {c.headers["authorization"] for c in standin.calls} == {f"Bearer {TOKEN}"}


def test_a_rate_limit_waits_for_retry_after(
    jira: tuple[JiraStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = jira
    standin.add_issue("SUP-13")
    wb = env()
    action = only(wb.decide("jira", "SUP-13", "suggest", [("SUP-3", 0.8)]))
    standin.fail_next(Scripted(429, None, {"retry-after": "12"}))
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status, outcome.wait_s) == (outbox.FAILED, 429, 12.0)


@pytest.mark.parametrize(
    ("overrides", "ticket", "status", "answer"),
    [
        ({"jira_api_token": "wrong-token-0123456789"}, "SUP-14", 401, "must be authenticated"),
        ({}, "SUP-404", 404, "Issue does not exist"),
        ({"jira_link_type": "Duplicated"}, "SUP-14", 404, "No issue link type"),
    ],
)
def test_a_refusal_is_dead_with_jiras_answer(
    jira: tuple[JiraStandin, str],
    env: Callable[..., WriteBackEnv],
    overrides: dict[str, str],
    ticket: str,
    status: int,
    answer: str,
) -> None:
    standin, _ = jira
    standin.add_issue("SUP-14")
    standin.add_issue("SUP-3")
    wb = env(**overrides)
    wb.store_ticket("jira", "SUP-3", "A")
    action = only(wb.decide("jira", ticket, "duplicate", [("SUP-3", 0.95)]))
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status) == (outbox.DEAD, status)
    assert answer in (wb.action(action.action_id).last_error or "")
