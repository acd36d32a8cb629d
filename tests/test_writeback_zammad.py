"""Write-back to Zammad against a served stand-in of its REST API (tests/standins/zammad.py),
on SQLite and PostgreSQL, delivered in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.standins import Scripted
from tests.standins.zammad import ZammadStandin
from tests.writeback import SECRET_BODY, WriteBackEnv
from tests.writeback import writeback as writeback  # the fixture
from tickets import outbox
from tickets.marks import marked_action
from tickets.outbox import ActionRow

TOKEN = "zammadToken0123456789abcdef"


@pytest.fixture
def zammad() -> Iterator[tuple[ZammadStandin, str]]:
    standin = ZammadStandin(TOKEN)
    with standin.served() as url:
        yield standin, url


@pytest.fixture
def env(
    zammad: tuple[ZammadStandin, str], writeback: Callable[..., WriteBackEnv]
) -> Callable[..., WriteBackEnv]:
    _, url = zammad

    def make(**overrides: object) -> WriteBackEnv:
        return writeback(**({"zammad_api_url": url, "zammad_api_token": TOKEN} | overrides))

    return make


def only(rows: list[ActionRow]) -> ActionRow:
    assert len(rows) == 1, rows
    return rows[0]


def test_a_duplicate_gets_an_internal_note_and_the_tag_by_ticket_number(
    zammad: tuple[ZammadStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, url = zammad
    canonical = standin.add_ticket("31001")
    new = standin.add_ticket("31002", tags=("hardware",))
    wb = env()
    wb.store_ticket("zammad", "31001", "Printer driver crashes on Windows 11")
    action = only(wb.decide("zammad", "31002", "duplicate", [("31001", 0.944)]))
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED

    (note,) = new.articles
    assert (note["type"], note["internal"], note["content_type"]) == ("note", True, "text/html")
    assert "Printer driver crashes on Windows 11" in note["body"]
    assert f"{url}/#ticket/zoom/{canonical.id}" in note["body"] and "0.94" in note["body"]
    assert SECRET_BODY not in note["body"]
    assert marked_action(note["body"]) == action.action_id  # the comment was dropped
    assert new.tags == ["hardware", "triage-duplicate"]
    assert {c.headers["authorization"] for c in standin.calls} == {f"Token token={TOKEN}"}


def test_a_lost_answer_is_not_noted_twice(
    zammad: tuple[ZammadStandin, str], env: Callable[..., WriteBackEnv]
) -> None:
    standin, _ = zammad
    new = standin.add_ticket("31003")
    wb = env()
    action = only(wb.decide("zammad", "31003", "suggest", [("31001", 0.8)]))
    standin.fail_next(Scripted(502, None, method="POST", path=r"/ticket_articles$", after=True))
    assert wb.deliverer.deliver(action.action_id).status == outbox.FAILED
    wb.make_due(action.action_id)
    assert wb.deliverer.deliver(action.action_id).status == outbox.DELIVERED
    assert len(new.articles) == 1 and new.tags == ["triage-similar"]
    # The ticket's number was resolved once: the second attempt asked no search for it.
    searches = [c.query for c in standin.calls_to("GET", r"/tickets/search$")]
    assert sum("31003" in q for q in searches) == 1


@pytest.mark.parametrize(
    ("token", "number", "status", "answer"),
    [
        ("zammadWRONG0123456789abcd", "31004", 401, "Invalid token"),
        (TOKEN, "99999", None, "no ticket number"),
    ],
)
def test_a_refusal_or_an_unknown_number_is_dead(
    zammad: tuple[ZammadStandin, str],
    env: Callable[..., WriteBackEnv],
    token: str,
    number: str,
    status: int | None,
    answer: str,
) -> None:
    standin, _ = zammad
    standin.add_ticket("31004")
    wb = env(zammad_api_token=token)
    action = only(wb.decide("zammad", number, "suggest", [("31001", 0.8)]))
    outcome = wb.deliverer.deliver(action.action_id)
    assert (outcome.status, outcome.http_status) == (outbox.DEAD, status)
    assert answer in (wb.action(action.action_id).last_error or "")
