"""Write-back to Help Scout against a served stand-in of its Mailbox API 2.0
(tests/standins/helpscout.py), OAuth client credentials included, on SQLite and PostgreSQL,
delivered in this process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.standins import Scripted
from tests.standins.helpscout import HelpScoutStandin
from tests.writeback import SECRET_BODY, WriteBackEnv
from tests.writeback import writeback as writeback  # the fixture
from tickets import outbox
from tickets.marks import marked_action
from tickets.outbox import ActionRow

APP_ID, APP_SECRET = "hsAppId0123456789", "hsAppSecret0123456789abcdef"


@pytest.fixture
def helpscout() -> Iterator[tuple[HelpScoutStandin, str]]:
    standin = HelpScoutStandin(APP_ID, APP_SECRET)
    with standin.served() as url:
        yield standin, url


@pytest.fixture
def env(
    helpscout: tuple[HelpScoutStandin, str], writeback: Callable[..., WriteBackEnv]
) -> Callable[..., WriteBackEnv]:
    _, url = helpscout

    def make(**overrides: object) -> WriteBackEnv:
        settings = {
            "helpscout_api_url": url,
            "helpscout_app_id": APP_ID,
            "helpscout_app_secret": APP_SECRET,
        }
        return writeback(**(settings | overrides))

    return make


def only(rows: list[ActionRow]) -> ActionRow:
    assert len(rows) == 1, rows
    return rows[0]


def test_a_duplicate_gets_a_note_and_the_tag_beside_the_agents_with_one_token(
    helpscout: tuple[HelpScoutStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = helpscout
    new = standin.add_conversation("5002", tags=("billing",))
    other = standin.add_conversation("5003")
    wb = env()
    wb.store_ticket("helpscout", "5001", "Coupon code rejected at checkout")
    action = only(wb.decide("helpscout", "5002", "duplicate", [("5001", 0.912)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    (note,) = new.threads
    assert note["type"] == "note"  # internal: customers never see notes
    assert "Coupon code rejected at checkout" in note["body"] and "0.91" in note["body"]
    assert "https://secure.helpscout.net/conversation/5001" in note["body"]
    assert SECRET_BODY not in note["body"]
    assert marked_action(note["body"]) == action.action_id
    assert new.tags == ["billing", "triage-duplicate"]

    second = only(wb.decide("helpscout", "5003", "suggest", [("5001", 0.8)]))
    assert wb.deliverer.deliver(second.action_id).status == outbox.DELIVERED
    assert other.tags == ["triage-similar"]
    assert len(standin.calls_to("POST", r"/oauth2/token$")) == 1  # the token is reused


def test_a_revoked_token_is_replaced_once_and_the_call_repeated(
    helpscout: tuple[HelpScoutStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = helpscout
    first = standin.add_conversation("5101")
    second = standin.add_conversation("5102")
    wb = env()
    a = only(wb.decide("helpscout", "5101", "suggest", [("5100", 0.8)]))
    assert wb.deliverer.deliver(a.action_id).status == outbox.DELIVERED
    standin.tokens.clear()  # revoked, or expired before its time
    b = only(wb.decide("helpscout", "5102", "suggest", [("5100", 0.8)]))
    assert wb.deliverer.deliver(b.action_id).status == outbox.DELIVERED
    assert len(standin.calls_to("POST", r"/oauth2/token$")) == 2
    assert len(first.threads) == 1 and len(second.threads) == 1


def test_a_token_near_its_expiry_is_fetched_again(
    writeback: Callable[..., WriteBackEnv],
) -> None:
    standin = HelpScoutStandin(APP_ID, APP_SECRET, expires_in=2)  # used for its first second
    standin.add_conversation("5201")
    standin.add_conversation("5202")
    with standin.served() as url:
        wb = writeback(
            helpscout_api_url=url, helpscout_app_id=APP_ID, helpscout_app_secret=APP_SECRET
        )
        for conversation in ("5201", "5202"):
            action = only(wb.decide("helpscout", conversation, "suggest", [("5200", 0.8)]))
            assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
            time.sleep(1.1)
    # One token per delivery (each of its four calls used it), none refused as expired.
    assert len(standin.calls_to("POST", r"/oauth2/token$")) == 2
    assert len(standin.calls) == 2 + 2 * 4


def test_a_lost_answer_is_not_noted_twice_across_pages(
    helpscout: tuple[HelpScoutStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = helpscout
    new = standin.add_conversation("5301", threads=60)
    wb = env()
    action = only(wb.decide("helpscout", "5301", "suggest", [("5300", 0.8)]))
    standin.fail_next(Scripted(503, None, method="POST", path=r"/notes$", after=True))
    assert wb.deliverer.deliver(action.action_id).status == outbox.FAILED
    wb.make_due(action.action_id)
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    mine = [t for t in new.threads if marked_action(t["body"]) == action.action_id]
    assert len(mine) == 1 and len(new.threads) == 61
    assert any("page=3" in c.query for c in standin.calls_to("GET", r"/threads$"))


def test_a_rate_limit_waits_for_x_ratelimit_retry_after(
    helpscout: tuple[HelpScoutStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = helpscout
    standin.add_conversation("5401")
    wb = env()
    action = only(wb.decide("helpscout", "5401", "suggest", [("5400", 0.8)]))
    standin.fail_next(
        Scripted(
            429,
            {"message": "Too many requests"},
            {
                "x-ratelimit-limit-minute": "200",
                "x-ratelimit-remaining-minute": "0",
                "x-ratelimit-retry-after": "21",
            },
            "GET",
            r"/threads$",
        )
    )
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status, outcome.wait_s) == (outbox.FAILED, 429, 21.0)


def test_wrong_app_credentials_are_dead_naming_the_settings(
    helpscout: tuple[HelpScoutStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = helpscout
    standin.add_conversation("5501")
    wb = env(helpscout_app_secret="hsWRONG0123456789abcdef")
    action = only(wb.decide("helpscout", "5501", "suggest", [("5500", 0.8)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DEAD
    error = wb.action(action.action_id).last_error or ""
    assert "TRIAGE_HELPSCOUT_APP_SECRET" in error and "invalid_client" in error
    assert "hsWRONG" not in error


def test_an_unknown_conversation_is_dead_with_help_scouts_answer(
    helpscout: tuple[HelpScoutStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    wb = env()
    action = only(wb.decide("helpscout", "5999", "suggest", [("5500", 0.8)]))
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status) == (outbox.DEAD, 404)
    assert "Conversation not found" in (wb.action(action.action_id).last_error or "")
