"""Write-back to Zendesk against a served stand-in of its API (tests/standins/zendesk.py), on
SQLite and PostgreSQL, delivered in this process."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest

from config.settings import SettingsError, load_settings
from tests.standins import Scripted
from tests.standins.zendesk import ZendeskStandin
from tests.writeback import SECRET_BODY, WriteBackEnv
from tests.writeback import writeback as writeback  # the fixture
from tickets import outbox
from tickets.marks import marked_action
from tickets.outbox import ActionRow

EMAIL, TOKEN = "triage-bot@example.com", "zd0123456789abcdefABCDEFghij"


@pytest.fixture
def zendesk() -> Iterator[tuple[ZendeskStandin, str]]:
    standin = ZendeskStandin(EMAIL, TOKEN)
    with standin.served() as url:
        yield standin, url


@pytest.fixture
def env(
    zendesk: tuple[ZendeskStandin, str], writeback: Callable[..., WriteBackEnv]
) -> Callable[..., WriteBackEnv]:
    _, url = zendesk

    def make(**overrides: object) -> WriteBackEnv:
        settings = {"zendesk_api_url": url, "zendesk_email": EMAIL, "zendesk_api_token": TOKEN}
        return writeback(**(settings | overrides))

    return make


def only(rows: list[ActionRow]) -> ActionRow:
    assert len(rows) == 1, rows
    return rows[0]


def test_a_duplicate_is_one_update_with_a_private_comment_and_the_tag(
    zendesk: tuple[ZendeskStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, url = zendesk
    ticket = standin.add_ticket("102", tags=("vip",))
    wb = env()
    wb.store_ticket("zendesk", "101", "Refund not received after 10 days")
    action = only(wb.decide("zendesk", "102", "duplicate", [("101", 0.934)]))
    assert (action.kind, action.target) == ("helpdesk", "zendesk")

    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    (put,) = standin.calls_to("PUT", r"/api/v2/tickets/102$")
    expected = "Basic " + base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
    assert put.headers["authorization"] == expected
    assert put.json()["ticket"]["comment"]["public"] is False  # an internal note
    assert ticket.tags == ["vip", "triage-duplicate"]
    (comment,) = ticket.comments()
    assert comment["public"] is False
    assert "Refund not received after 10 days" in comment["html_body"]
    assert f"{url}/agent/tickets/101" in comment["html_body"] and "0.93" in comment["body"]
    assert SECRET_BODY not in comment["html_body"]
    # The stand-in's sanitiser dropped the HTML comment: the visible line still names it.
    assert marked_action(comment["body"]) == action.action_id
    assert ticket.audits[-1]["metadata"]["custom"] == {"ticket_triage_action": action.action_id}


def test_a_suggestion_lists_the_matches(
    zendesk: tuple[ZendeskStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, url = zendesk
    ticket = standin.add_ticket("209")
    wb = env()
    wb.store_ticket("zendesk", "201", "Cannot change the delivery address")
    wb.store_ticket("zendesk", "202", "Parcel marked delivered but not here")
    action = only(wb.decide("zendesk", "209", "suggest", [("201", 0.77), ("202", 0.72)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    (comment,) = ticket.comments()
    html = comment["html_body"]
    assert html.index("Cannot change the delivery") < html.index("Parcel marked delivered")
    assert f"{url}/agent/tickets/202" in html and "0.72" in html
    assert ticket.tags == ["triage-similar"]


def test_an_update_whose_answer_was_lost_is_not_commented_twice(
    zendesk: tuple[ZendeskStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    """Zendesk applied the update and its answer never arrived (a 502 from its edge, or the
    worker killed before reading it): the next attempt finds the action in the ticket's
    audits, past a first page of 100, and sends the tag alone."""
    standin, _ = zendesk
    ticket = standin.add_ticket("303", audits=120)
    wb = env()
    action = only(wb.decide("zendesk", "303", "suggest", [("301", 0.8)]))
    standin.fail_next(Scripted(502, {"error": "Bad Gateway"}, method="PUT", after=True))
    assert wb.deliverer.deliver(action.action_id).status == outbox.FAILED
    wb.make_due(action.action_id)
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    mine = [c for c in ticket.comments() if marked_action(c["body"]) == action.action_id]
    assert len(mine) == 1 and len(ticket.comments()) == 121
    second = standin.calls_to("PUT", r"/303$")[-1].json()["ticket"]
    assert "comment" not in second and second["additional_tags"] == ["triage-similar"]
    assert any("page%5Bafter%5D" in c.query or "page[after]" in c.query
               for c in standin.calls_to("GET", r"/audits$"))  # fmt: skip


def test_an_oauth_token_is_sent_as_bearer(
    zendesk: tuple[ZendeskStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = zendesk
    standin.add_ticket("404")
    wb = env(zendesk_email=None)
    action = only(wb.decide("zendesk", "404", "suggest", [("401", 0.8)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert standin.calls[-1].headers["authorization"] == f"Bearer {TOKEN}"


def test_a_rate_limit_waits_for_retry_after(
    zendesk: tuple[ZendeskStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = zendesk
    standin.add_ticket("505")
    wb = env()
    action = only(wb.decide("zendesk", "505", "suggest", [("501", 0.8)]))
    standin.fail_next(
        Scripted(
            429,
            {"error": "APIRateLimitExceeded", "description": "Rate limit exceeded"},
            {"retry-after": "47"},
        )
    )
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status, outcome.wait_s) == (outbox.FAILED, 429, 47.0)


@pytest.mark.parametrize(
    ("token", "ticket", "status", "answer"),
    [
        ("zdWRONG456789abcdefABCDEFghij", "606", 401, "Couldn't authenticate you"),
        (TOKEN, "999", 404, "RecordNotFound"),
    ],
)
def test_a_refusal_is_dead_with_zendesks_answer(
    zendesk: tuple[ZendeskStandin, str],
    env: Callable[..., WriteBackEnv],
    token: str,
    ticket: str,
    status: int,
    answer: str,
) -> None:
    standin, _ = zendesk
    standin.add_ticket("606")
    wb = env(zendesk_api_token=token)
    action = only(wb.decide("zendesk", ticket, "suggest", [("601", 0.8)]))
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status) == (outbox.DEAD, status)
    assert answer in (wb.action(action.action_id).last_error or "")


def test_a_zendesk_token_needs_the_account_url() -> None:
    with pytest.raises(
        SettingsError, match="TRIAGE_ZENDESK_API_TOKEN needs TRIAGE_ZENDESK_API_URL"
    ):
        load_settings(env="development", zendesk_api_token=TOKEN)
