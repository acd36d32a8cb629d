"""Write-back to Freshdesk against a served stand-in of its API v2
(tests/standins/freshdesk.py), on SQLite and PostgreSQL, delivered in this process."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import pytest

from tests.standins import Scripted
from tests.standins.freshdesk import FreshdeskStandin
from tests.writeback import SECRET_BODY, WriteBackEnv
from tests.writeback import writeback as writeback  # the fixture
from tickets import outbox
from tickets.marks import marked_action
from tickets.outbox import ActionRow

KEY = "fdKey0123456789abcdefAB"


@pytest.fixture
def freshdesk() -> Iterator[tuple[FreshdeskStandin, str]]:
    standin = FreshdeskStandin(KEY)
    with standin.served() as url:
        yield standin, url


@pytest.fixture
def env(
    freshdesk: tuple[FreshdeskStandin, str], writeback: Callable[..., WriteBackEnv]
) -> Callable[..., WriteBackEnv]:
    _, url = freshdesk

    def make(**overrides: object) -> WriteBackEnv:
        return writeback(**({"freshdesk_api_url": url, "freshdesk_api_token": KEY} | overrides))

    return make


def only(rows: list[ActionRow]) -> ActionRow:
    assert len(rows) == 1, rows
    return rows[0]


def test_a_duplicate_gets_a_private_note_and_the_tag_beside_the_agents(
    freshdesk: tuple[FreshdeskStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, url = freshdesk
    ticket = standin.add_ticket("12", tags=("billing", "Urgent"))
    wb = env()
    wb.store_ticket("freshdesk", "11", "Charged twice for the March invoice")
    action = only(wb.decide("freshdesk", "12", "duplicate", [("11", 0.962)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    (note,) = ticket.conversations
    assert note["private"] is True
    assert "Charged twice for the March invoice" in note["body"]
    assert f"{url}/a/tickets/11" in note["body"] and "0.96" in note["body_text"]
    assert SECRET_BODY not in note["body"]
    assert marked_action(note["body_text"]) == action.action_id  # the sanitiser kept the line
    assert ticket.tags == ["billing", "Urgent", "triage-duplicate"]
    post = standin.calls_to("POST", r"/notes$")[0]
    assert (
        post.headers["authorization"] == "Basic " + base64.b64encode(f"{KEY}:X".encode()).decode()
    )


def test_a_retry_after_a_lost_answer_posts_no_second_note_and_writes_tags_once(
    freshdesk: tuple[FreshdeskStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    """The note was made and its answer lost: the next attempt finds it on the second page of
    conversations; a tag already there is not written again."""
    standin, _ = freshdesk
    ticket = standin.add_ticket("21", notes=130)
    wb = env()
    action = only(wb.decide("freshdesk", "21", "suggest", [("20", 0.8)]))
    standin.fail_next(Scripted(503, None, {"retry-after": "2"}, "POST", r"/notes$", after=True))
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.wait_s) == (outbox.FAILED, 2.0)
    wb.make_due(action.action_id)
    assert wb.deliverer.holds is not None
    wb.deliverer.holds.redis.delete(wb.deliverer.holds._key("freshdesk"))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    mine = [n for n in ticket.conversations if marked_action(n["body_text"]) == action.action_id]
    assert len(mine) == 1 and len(ticket.conversations) == 131
    assert ticket.tags == ["triage-similar"]
    wb.make_due(action.action_id)  # a third attempt (a redrive): nothing new is written
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert len(standin.calls_to("PUT", r"/tickets/21$")) == 1
    assert len(ticket.conversations) == 131


def test_a_rate_limit_waits_for_retry_after(
    freshdesk: tuple[FreshdeskStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = freshdesk
    standin.add_ticket("31")
    wb = env()
    action = only(wb.decide("freshdesk", "31", "suggest", [("30", 0.8)]))
    standin.fail_next(
        Scripted(
            429,
            {"message": "You have exceeded the limit of requests per minute"},
            {"retry-after": "33", "x-ratelimit-total": "200", "x-ratelimit-remaining": "0"},
        )
    )
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status, outcome.wait_s) == (outbox.FAILED, 429, 33.0)


@pytest.mark.parametrize(
    ("key", "ticket", "status", "answer"),
    [("fdWRONG456789abcdefAB", "41", 401, "invalid_credentials"), (KEY, "404", 404, "404")],
)
def test_a_refusal_is_dead_with_freshdesks_answer(
    freshdesk: tuple[FreshdeskStandin, str],
    env: Callable[..., WriteBackEnv],
    key: str,
    ticket: str,
    status: int,
    answer: str,
) -> None:
    standin, _ = freshdesk
    standin.add_ticket("41")
    wb = env(freshdesk_api_token=key)
    action = only(wb.decide("freshdesk", ticket, "suggest", [("40", 0.8)]))
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status) == (outbox.DEAD, status)
    assert answer in (wb.action(action.action_id).last_error or "")
