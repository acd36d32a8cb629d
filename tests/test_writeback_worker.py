"""One real worker process writing back to all six helpdesks at once, each a served stand-in:
a pair of paraphrased tickets per helpdesk, the later one routed `duplicate` and its note and
tag written into that helpdesk, and nowhere else."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from config.settings import Settings
from tests.conftest import WorkerProcess, decisions, run_triage, tickets_csv, wait_for
from tests.standins.freshdesk import FreshdeskStandin
from tests.standins.github import GitHubStandin
from tests.standins.helpscout import HelpScoutStandin
from tests.standins.jira import JiraStandin
from tests.standins.zammad import ZammadStandin
from tests.standins.zendesk import ZendeskStandin
from tests.test_actions_worker import actions_of
from tickets.marks import marked_action

TOKEN = "standinToken0123456789abcdef"
EMAIL = "triage-bot@example.com"
# A different problem per helpdesk, each reported twice in other words.
PAIRS = {
    "github": (
        "Crash when opening a PDF attachment",
        "The app crashes when I open a PDF attachment!",
    ),
    "zendesk": (
        "Refund still missing after two weeks",
        "My refund has not arrived after two weeks.",
    ),
    "jira": ("CSV export times out on big projects", "Exporting a large project to CSV times out."),
    "freshdesk": ("Invoice shows the wrong VAT rate", "The VAT rate on my invoice is wrong."),
    "zammad": (
        "Printer offline after the driver update",
        "Since the driver update my printer is offline.",
    ),
    "helpscout": ("Coupon code rejected at checkout", "At checkout my coupon code gets rejected."),
}


@pytest.fixture
def standins() -> Iterator[dict[str, tuple[object, str]]]:
    made = {
        "github": GitHubStandin(TOKEN),
        "zendesk": ZendeskStandin(EMAIL, TOKEN),
        "jira": JiraStandin(EMAIL, TOKEN),
        "freshdesk": FreshdeskStandin(TOKEN),
        "zammad": ZammadStandin(TOKEN),
        "helpscout": HelpScoutStandin("app-id", TOKEN),
    }
    with ExitStack() as stack:
        yield {name: (s, stack.enter_context(s.served())) for name, s in made.items()}


def test_one_worker_writes_each_decision_back_to_its_own_helpdesk(
    standins: dict[str, tuple[object, str]],
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    github, zendesk, jira = (standins[n][0] for n in ("github", "zendesk", "jira"))
    freshdesk, zammad, helpscout = (standins[n][0] for n in ("freshdesk", "zammad", "helpscout"))
    assert isinstance(github, GitHubStandin) and isinstance(zendesk, ZendeskStandin)
    assert isinstance(jira, JiraStandin) and isinstance(freshdesk, FreshdeskStandin)
    assert isinstance(zammad, ZammadStandin) and isinstance(helpscout, HelpScoutStandin)
    ids = {
        "github": ("acme/app#1", "acme/app#2"),
        "zendesk": ("11", "12"),
        "jira": ("SUP-1", "SUP-2"),
        "freshdesk": ("21", "22"),
        "zammad": ("31001", "31002"),
        "helpscout": ("41", "42"),
    }
    for first, later in (ids["github"],):
        github.add_issue(first), github.add_issue(later)
    for key in ids["zendesk"]:
        zendesk.add_ticket(key)
    for key in ids["jira"]:
        jira.add_issue(key)
    for key in ids["freshdesk"]:
        freshdesk.add_ticket(key)
    numbers = {key: zammad.add_ticket(key) for key in ids["zammad"]}
    for key in ids["helpscout"]:
        helpscout.add_conversation(key)
    url = {name: u for name, (_, u) in standins.items()}
    settings = make_settings(
        queue=queue_name,
        database_url=sqlite_url,
        actions_sweep_s=0.5,
        github_api_url=url["github"],
        github_api_token=TOKEN,
        zendesk_api_url=url["zendesk"],
        zendesk_email=EMAIL,
        zendesk_api_token=TOKEN,
        jira_api_url=url["jira"],
        jira_email=EMAIL,
        jira_api_token=TOKEN,
        freshdesk_api_url=url["freshdesk"],
        freshdesk_api_token=TOKEN,
        zammad_api_url=url["zammad"],
        zammad_api_token=TOKEN,
        helpscout_api_url=url["helpscout"],
        helpscout_app_id="app-id",
        helpscout_app_secret=TOKEN,
    )
    start_worker(settings)
    for which in (0, 1):
        for source, keys in ids.items():
            subject = PAIRS[source][which]
            row = (keys[which], subject, f"{PAIRS[source][1 - which]} {subject}")
            path = tickets_csv(tmp_path / f"{source}{which}.csv", [row])
            out = run_triage(settings, "ingest", str(path), "--source", source, "--quiet")
            assert out.returncode == 0, out.stderr
        wait_for(lambda w=which: len(decisions(sqlite_url)) == 6 * (w + 1), 120, "decisions")
    wait_for(
        lambda: (
            {a.status for a in actions_of(sqlite_url)} == {"delivered"}
            and len(actions_of(sqlite_url)) == 6
        ),
        60,
        "six write-backs delivered",
    )
    by_key = {(a.source, a.ticket_id): a.action_id for a in actions_of(sqlite_url)}
    assert set(by_key) == {(source, keys[1]) for source, keys in ids.items()}
    routes = {d.ticket_id: d.route for d in decisions(sqlite_url).values()}
    assert all(routes[keys[1]] == "duplicate" for keys in ids.values())

    def mine(source: str, texts: list[str | None]) -> int:
        return sum(marked_action(t) == by_key[(source, ids[source][1])] for t in texts)

    later = {source: keys[1] for source, keys in ids.items()}
    assert mine("github", [c["body"] for c in github.issues[later["github"]].comments]) == 1
    assert github.issues[later["github"]].labels == ["triage-duplicate"]
    zd = zendesk.tickets[later["zendesk"]]
    assert mine("zendesk", [c["body"] for c in zd.comments()]) == 1
    assert zd.tags == ["triage-duplicate"]
    ji = jira.issues[later["jira"]]
    assert mine("jira", [c["body"] for c in ji.comments]) == 1
    assert ji.labels == ["triage-duplicate"] and len(ji.links) == 1
    fd = freshdesk.tickets[later["freshdesk"]]
    assert mine("freshdesk", [c["body_text"] for c in fd.conversations]) == 1
    assert fd.tags == ["triage-duplicate"]
    zm = numbers[later["zammad"]]
    assert mine("zammad", [a["body"] for a in zm.articles]) == 1
    assert zm.tags == ["triage-duplicate"]
    hs = helpscout.conversations[later["helpscout"]]
    assert mine("helpscout", [t["body"] for t in hs.threads]) == 1
    assert hs.tags == ["triage-duplicate"]
    # The earlier tickets (routed manual) got nothing anywhere.
    assert github.issues[ids["github"][0]].comments == []
    assert zendesk.tickets[ids["zendesk"][0]].audits == []
    assert jira.issues[ids["jira"][0]].comments == []
    assert freshdesk.tickets[ids["freshdesk"][0]].conversations == []
    assert numbers[ids["zammad"][0]].articles == []
    assert helpscout.conversations[ids["helpscout"][0]].threads == []
