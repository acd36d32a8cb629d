"""The dashboard's review queue: what it lists (filters, keyset pages, ticket texts, links),
who may write a verdict (scope, CSRF), the precision measured from reviews, and an agent
working through it with the keyboard in Debian's headless Chromium (selenium over Debian's
chromedriver).

The app is real (TestClient, or uvicorn on a free port for the browser), on real Redis and on
SQLite and PostgreSQL where the SQL differs (the queue's anti-join and keyset, the score
bands' floor()).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from math import floor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session

from config.settings import Settings
from quality.calibrate import load_feedback
from service import queries
from service.app import create_app
from service.helpdesk_links import helpdesk_link
from service.routers.dashboard import COOKIE, session_cookie
from tests.services import CHROMIUM_FLAGS, chromedriver_binary, chromium_binary, served_app
from tickets import db
from worker.routing import Thresholds

READ = "rd-review-3f9a1c77e2"  # read only: may look, not review
AGENT = "ag-review-8b2e4d10f6"  # read + feedback: an agent's dashboard token
WRITER = "fb-review-5c6d7e8f90"  # feedback only: a script of the API
INGEST = "in-review-0a1b2c3d4e"
TOKENS = {READ: ["read"], AGENT: ["read", "feedback"], WRITER: ["feedback"], INGEST: ["ingest"]}
THRESHOLDS = Thresholds(0.85, 0.70)
CSRF_META = re.compile(r"<meta name='csrf-token' content='([0-9a-f]+)'>")
ITEM = re.compile(r"data-testid='review-item' data-source='([^']*)' data-ticket-id='([^']*)'")


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], database_url: str, queue_name: str
) -> Settings:
    return make_settings(database_url=database_url, queue=queue_name, api_tokens=TOKENS)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = db.make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


# --- sample rows -----------------------------------------------------------------------------


def decision(
    ticket_id: str,
    route: str,
    score: float | None,
    decided_at: datetime,
    *,
    source: str = "zendesk",
    queue: str | None = "billing",
    matches: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    matches = matches or []
    best = matches[0] if matches else None
    return {
        "source": source,
        "ticket_id": ticket_id,
        "route": route,
        "score": score,
        "matched_source": best["source"] if best else None,
        "matched_ticket_id": best["ticket_id"] if best else None,
        "canonical_source": best["source"] if best else source,
        "canonical_ticket_id": best["ticket_id"] if best else ticket_id,
        "matches": matches,
        "model": "local:all-MiniLM-L6-v2",
        "duplicate_threshold": THRESHOLDS.duplicate,
        "suggest_threshold": THRESHOLDS.suggest,
        "queue": queue,
        "subject": f"decided {ticket_id}",
        "received_at": decided_at - timedelta(seconds=1),
        "decided_at": decided_at,
        "latency_ms": 1000,
    }


def ticket(source: str, ticket_id: str, subject: str | None, body: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "source": source,
        "ticket_id": ticket_id,
        "subject": subject,
        "body": body,
        "queue": None,
        "tags": [],
        "received_at": now,
        "content_hash": "0" * 64,
        "backfill": False,
        "model": "local:all-MiniLM-L6-v2",
        "stored_at": now,
    }


def verdict(source: str, ticket_id: str, said: str, agent: str, route: str, score: float) -> Any:
    return {
        "source": source,
        "ticket_id": ticket_id,
        "verdict": said,
        "agent": agent,
        "comment": None,
        "route": route,
        "score": score,
        "created_at": datetime.now(UTC),
    }


def feedback_rows(engine: Engine) -> list[db.FeedbackRow]:
    with Session(engine) as s:
        return list(s.scalars(select(db.FeedbackRow).order_by(db.FeedbackRow.id)))


def seed_queue(engine: Engine, now: datetime) -> None:
    """16 decisions of every route, queue and source, two decided at the same instant, one
    already judged; texts stored for some tickets and matches, one body long."""
    rows = []
    for i in range(14):
        route = ("duplicate", "suggest", "manual")[i % 3]
        rows.append(
            decision(
                f"q{i:02d}",
                route,
                0.5 if route == "manual" else (0.9 if route == "duplicate" else 0.75),
                now - timedelta(minutes=i),
                source="github" if i % 2 else "zendesk",
                queue="billing" if i % 4 < 2 else "tech",
                matches=[
                    {"source": "zendesk", "ticket_id": "root-1", "score": 0.9},
                    {"source": "zendesk", "ticket_id": "gone", "score": 0.8},
                ]
                if route != "manual"
                else [],
            )
        )
    same = now - timedelta(minutes=30)
    rows += [decision("tie-a", "duplicate", 0.88, same), decision("tie-b", "suggest", 0.72, same)]
    long_body = "First line.\n\n  " + "word " * 200  # 1,016 characters
    with engine.begin() as conn:
        conn.execute(insert(db.DecisionRow), rows)
        conn.execute(
            insert(db.TicketRow),
            [
                ticket("zendesk", "q00", "Printer on fire", long_body),
                ticket("zendesk", "root-1", "Printer smokes", "It smokes since Monday."),
            ],
        )
        conn.execute(
            insert(db.FeedbackRow), [verdict("github", "q01", "veto", "bo", "suggest", 0.75)]
        )


def expected_queue(
    engine: Engine, route: str | None = None, queue: str | None = None, source: str | None = None
) -> list[str]:
    """The queue computed from the raw tables in Python: not reviewed, newest first."""
    with Session(engine) as s:
        decided = list(s.scalars(select(db.DecisionRow)))
        judged = {(f.source, f.ticket_id) for f in s.scalars(select(db.FeedbackRow))}
    keep = [
        d
        for d in decided
        if d.route in ((route,) if route else ("duplicate", "suggest"))
        and (d.source, d.ticket_id) not in judged
        and (queue is None or d.queue == queue)
        and (source is None or d.source == source)
    ]
    keep.sort(key=lambda d: (d.decided_at, d.id), reverse=True)
    return [d.ticket_id for d in keep]


def queue_ids(engine: Engine, **filters: Any) -> tuple[list[str], str | None]:
    page = queries.review_queue(engine, cursor=None, limit=100, **filters)
    return [i["ticket_id"] for i in page["items"]], page["next_cursor"]


# --- what the queue lists ----------------------------------------------------------------------


def test_queue_filters_order_and_texts(engine: Engine) -> None:
    seed_queue(engine, datetime.now(UTC))
    everything = expected_queue(engine)
    # duplicate and suggest, newest first, the judged one (q01) left out, the tie by id
    assert len(everything) == 11 and "q01" not in everything
    assert everything[-2:] == ["tie-b", "tie-a"]
    none = {"route": None, "queue": None, "source": None}
    assert queue_ids(engine, **none) == (everything, None)
    for route in (None, "duplicate", "suggest"):
        for queue in (None, "billing", "tech"):
            for source in (None, "github", "zendesk"):
                got, _ = queue_ids(engine, route=route, queue=queue, source=source)
                assert got == expected_queue(engine, route, queue, source), (route, queue, source)
    with pytest.raises(queries.BadQuery):
        queries.review_filters("manual", None, None)

    page = queries.review_queue(engine, limit=100, cursor=None, **none)
    assert page["waiting"] == 11
    first = next(i for i in page["items"] if i["ticket_id"] == "q00")
    # the new ticket's text from triage_tickets: whitespace folded, cut at 400 characters
    assert first["subject"] == "Printer on fire" and first["stored"]
    folded = " ".join(("First line.\n\n  " + "word " * 200).split())
    assert first["excerpt"][-1] == "…" and folded.startswith(first["excerpt"][:-1])
    assert queries.EXCERPT_CHARS - 10 < len(first["excerpt"]) <= queries.EXCERPT_CHARS + 1
    root, gone = first["matches"]
    assert (root["ticket_id"], root["score"], root["subject"]) == ("root-1", 0.9, "Printer smokes")
    assert root["excerpt"] == "It smokes since Monday." and root["stored"]
    assert (gone["stored"], gone["subject"], gone["excerpt"]) == (False, None, None)
    # no text stored: the decision's own subject, and no excerpt
    other = next(i for i in page["items"] if i["ticket_id"] == "q03")
    assert (other["stored"], other["subject"]) == (False, "decided q03")
    # links only where the stored id gives the address
    assert first["link"] is None and other["link"] is None  # zendesk, github without repo#n


def test_helpdesk_links_come_only_from_what_is_stored() -> None:
    assert helpdesk_link("github", "acme/app#7") == "https://github.com/acme/app/issues/7"
    assert helpdesk_link("github", "acme.io/my_app-2#10") == (
        "https://github.com/acme.io/my_app-2/issues/10"
    )
    for source, ticket_id in [
        ("github", "q03"),  # not owner/repo#number
        ("github", "a/b#7/../../x"),
        ("github", "a/b#x"),
        ("zendesk", "4711"),  # the subdomain is not stored
        ("jira", "OPS-1"),
        ("freshdesk", "12"),
        ("zammad", "10081"),
        ("helpscout", "99"),
    ]:
        assert helpdesk_link(source, ticket_id) is None, (source, ticket_id)


def test_keyset_pages_survive_reviews(engine: Engine) -> None:
    seed_queue(engine, datetime.now(UTC))
    everything = expected_queue(engine)
    none = {"route": None, "queue": None, "source": None}
    # walking two at a time gives the whole queue once, in order
    walked: list[str] = []
    cursor = None
    while True:
        page = queries.review_queue(engine, limit=2, cursor=cursor, **none)
        walked += [i["ticket_id"] for i in page["items"]]
        assert len(page["items"]) <= 2
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == everything
    # the first page is reviewed while the agent reads it: the next page is still the next
    # three (OFFSET 3 would now skip them), and a fresh first page starts there too
    first = queries.review_queue(engine, limit=3, cursor=None, **none)
    ids = [(i["source"], i["ticket_id"]) for i in first["items"]]
    for source, ticket_id in ids:
        saved = queries.save_feedback(engine, source, ticket_id, "confirm", "ana", None)
        assert not isinstance(saved, tuple)
    after = queries.review_queue(engine, limit=3, cursor=first["next_cursor"], **none)
    assert [i["ticket_id"] for i in after["items"]] == everything[3:6]
    fresh = queries.review_queue(engine, limit=3, cursor=None, **none)
    assert [i["ticket_id"] for i in fresh["items"]] == everything[3:6]
    assert fresh["waiting"] == len(everything) - 3


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_review_page_filters_and_pages(client: TestClient, engine: Engine) -> None:
    seed_queue(engine, datetime.now(UTC))
    bearer = {"Authorization": f"Bearer {READ}"}
    r = client.get("/dashboard/review", headers=bearer)
    assert r.status_code == 200
    assert [t for _, t in ITEM.findall(r.text)] == expected_queue(engine)
    # the form controls carry the filters; blank ones are no filter
    params = {"route": "duplicate", "queue": "billing", "source": "", "limit": "2"}
    r = client.get("/dashboard/review", params=params, headers=bearer)
    want = expected_queue(engine, "duplicate", "billing")
    assert [t for _, t in ITEM.findall(r.text)] == want[:2]
    assert "<option value='duplicate' selected>" in r.text
    assert "name='queue' data-testid='filter-queue' value='billing'" in r.text
    older = re.search(r"data-testid='review-older' href='([^']+)'", r.text)
    assert older is not None and "route=duplicate&amp;queue=billing&amp;cursor=" in older[1]
    # the script's next page: the same filters after the cursor, as rows without a page
    nxt = re.search(r"data-next='([^']+)'", r.text)
    assert nxt is not None
    items = client.get(nxt[1].replace("&amp;", "&"), headers=bearer)
    assert items.status_code == 200 and "<html" not in items.text
    assert [t for _, t in ITEM.findall(items.text)] == want[2:4]
    # a read-only token sees the queue without working buttons or a CSRF token
    assert "data-testid='review-readonly'" in r.text and "csrf-token" not in r.text
    assert r.text.count(" disabled>") == 2 * len(want[:2])
    # what cannot be a filter
    for bad in ({"route": "manual"}, {"queue": "x" * 101}, {"cursor": "nope"}):
        assert client.get("/dashboard/review", params=bad, headers=bearer).status_code == 422
    # signed out: the sign-in form, which comes back to the same filters
    r = client.get("/dashboard/review", params={"route": "suggest"})
    assert r.status_code == 401 and "value='/review?route=suggest'" in r.text
    assert client.get("/dashboard/review/items").status_code == 401
    r = client.post(
        "/dashboard/login",
        data={"token": AGENT, "agent": "Ana B.", "next": "/review?route=suggest"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/review?route=suggest"
    page = client.get("/dashboard/review?route=suggest")
    assert [t for _, t in ITEM.findall(page.text)] == expected_queue(engine, "suggest")
    assert "data-testid='review-agent'>Ana B.<" in page.text
    # the page's policy holds: no inline script, the one script is a file with the nonce
    csp = page.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    nonce = re.findall(r"script-src 'nonce-([^']+)'", csp)[0]
    assert re.findall(r"<script[^>]*>", page.text) == [
        f"<script src='/dashboard/static/review.js' nonce='{nonce}'>"
    ]
    assert client.get("/dashboard/static/review.js").status_code == 200
    assert AGENT not in page.text


# --- who may write a verdict -------------------------------------------------------------------


def sign_in(client: TestClient, token: str, agent: str | None = None) -> str:
    """A cookie session for ``token``; the CSRF token its review page carries."""
    client.cookies.clear()
    params = {"token": token} | ({"agent": agent} if agent else {})
    r = client.get("/dashboard/review", params=params)
    assert r.status_code == 200, r.text
    found = CSRF_META.search(r.text)
    assert found is not None
    return found[1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_verdicts_need_the_scope_and_the_csrf_token(client: TestClient, engine: Engine) -> None:
    seed_queue(engine, datetime.now(UTC))
    url = "/dashboard/review/feedback"
    body = {"source": "zendesk", "ticket_id": "q00", "verdict": "confirm"}

    # no session, a forged one, a sign-in name altered after the fact
    assert client.post(url, json=body).status_code == 401
    client.cookies.set(COOKIE, "1.abc", path="/dashboard")
    assert client.post(url, json=body).status_code == 401
    forged = session_cookie(AGENT, agent="ana").rsplit(".", 1)[0] + ".Ym9i"  # "bob"
    client.cookies.set(COOKIE, forged, path="/dashboard")
    assert client.post(url, json=body).status_code == 401

    # a session of a read-only token: its page has a CSRF token, the write still needs the scope
    csrf = sign_in(client, READ)
    r = client.post(url, json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403 and "'feedback' scope" in r.json()["detail"]

    # an agent's session: a cross-site POST has the cookie but not the page's token
    csrf = sign_in(client, AGENT, "ana")
    cross_site = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    for headers in (
        cross_site,
        {**cross_site, "X-CSRF-Token": ""},
        {**cross_site, "X-CSRF-Token": "0" * len(csrf)},
        {"X-CSRF-Token": csrf[:-1]},
    ):
        r = client.post(url, json=body, headers=headers)
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"], headers
    # a form post (what a cross-site page can send without CORS) is refused the same way
    r = client.post(url, data=body, headers=cross_site)
    assert r.status_code == 403
    assert [f.ticket_id for f in feedback_rows(engine)] == ["q01"]  # the seeded one only
    # another session's token does not fit this one
    other = TestClient(client.app)
    other_csrf = sign_in(other, AGENT, "bo")
    assert other_csrf != csrf
    assert client.post(url, json=body, headers={"X-CSRF-Token": other_csrf}).status_code == 403

    # with the page's token: stored under the name given at sign-in, off the queue
    r = client.post(url, json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201, r.text
    assert r.json()["verdict"] == "confirm" and r.json()["agent"] == "ana"
    (row,) = feedback_rows(engine)[1:]  # after the seeded one
    assert (row.source, row.ticket_id, row.verdict, row.agent, row.route, row.score) == (
        "zendesk",
        "q00",
        "confirm",
        "ana",
        "duplicate",
        0.9,
    )
    assert "q00" not in expected_queue(engine)
    page = client.get("/dashboard/review")
    assert "q00" not in [t for _, t in ITEM.findall(page.text)]
    # the API's vocabulary and its refusals
    ok = {"X-CSRF-Token": csrf}
    assert client.post(url, json={**body, "verdict": "reject"}, headers=ok).status_code == 422
    manual = {"source": "zendesk", "ticket_id": "q02", "verdict": "veto"}
    assert client.post(url, json=manual, headers=ok).status_code == 409
    unknown = {"source": "zendesk", "ticket_id": "nope", "verdict": "veto"}
    assert client.post(url, json=unknown, headers=ok).status_code == 404

    # a bearer header is no ambient credential: no CSRF token, but the scope, as the API
    client.cookies.clear()
    veto = {"source": "github", "ticket_id": "q03", "verdict": "veto"}
    for token, status in ((READ, 403), (INGEST, 403), ("forged-token-1234", 401)):
        r = client.post(url, json=veto, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == status, token
    r = client.post(url, json=veto, headers={"Authorization": f"Bearer {WRITER}"})
    assert r.status_code == 201 and r.json()["agent"] == "dashboard"
    assert [(f.ticket_id, f.verdict) for f in feedback_rows(engine)][1:] == [
        ("q00", "confirm"),
        ("q03", "veto"),
    ]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sign_in_names(client: TestClient) -> None:
    for bad in ("x" * 201, "tab\there"):
        r = client.get("/dashboard", params={"token": AGENT, "agent": bad}, follow_redirects=False)
        assert r.status_code == 401 and "set-cookie" not in r.headers
        r = client.post(
            "/dashboard/login", data={"token": AGENT, "agent": bad}, follow_redirects=False
        )
        assert r.status_code == 401 and "set-cookie" not in r.headers
    # no name: the verdicts are the dashboard's
    r = client.post("/dashboard/login", data={"token": AGENT}, follow_redirects=False)
    assert r.status_code == 303
    assert "data-testid='review-agent'>dashboard<" in client.get("/dashboard/review").text


# --- what reviews measured ---------------------------------------------------------------------

# (ticket, route, score, verdicts): scores on band edges, one at 1 or more, one below its
# route's threshold and one above the duplicate threshold (per-queue thresholds route so).
JUDGED = [
    ("d1", "duplicate", 0.85, ["confirm"]),
    ("d2", "duplicate", 0.8999, ["veto"]),
    ("d3", "duplicate", 0.90, ["confirm", "confirm", "veto"]),
    ("d4", "duplicate", 0.95, ["confirm"]),
    ("d5", "duplicate", 1.0000001, ["confirm"]),
    ("d6", "duplicate", 0.97, ["confirm", "veto"]),  # tied: left out
    ("d7", "duplicate", 0.93, []),  # shown, not judged
    ("s1", "suggest", 0.70, ["veto"]),
    ("s2", "suggest", 0.75, ["confirm"]),
    ("s3", "suggest", 0.7999, ["veto", "veto"]),
    ("s4", "suggest", 0.80, ["confirm"]),
    ("s5", "suggest", 0.62, ["veto"]),  # below the default suggest threshold
    ("s6", "suggest", 0.88, ["confirm"]),  # above the default duplicate threshold
    ("s7", "suggest", 0.71, []),
    ("m1", "manual", 0.40, []),
]


def exact_band(score: float, low: float, top: int) -> int:
    """The band in decimal arithmetic, as a person would count it: no floating point."""
    if score >= 1:
        return top
    return floor((Decimal(str(score)) - Decimal(str(low))) / Decimal("0.05"))


def test_precision_per_route_and_band_equals_calibration(
    engine: Engine, client: TestClient
) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(db.DecisionRow),
            [
                decision(t, r, s, now - timedelta(minutes=i))
                for i, (t, r, s, _) in enumerate(JUDGED)
            ],
        )
        conn.execute(
            insert(db.FeedbackRow),
            [
                verdict("zendesk", t, said, f"agent{n}", r, s)
                for t, r, s, said_all in JUDGED
                for n, said in enumerate(said_all)
            ],
        )
    stats = queries.review_stats(engine, THRESHOLDS)

    lows = {"duplicate": 0.85, "suggest": 0.70}
    tops = {"duplicate": 2, "suggest": 2}  # 0.95-1.00 and 0.80-0.85
    want: dict[str, Counter[tuple[int, str]]] = {r: Counter() for r in lows}
    for _, route, score, said in JUDGED:
        if route == "manual":
            continue
        band = exact_band(score, lows[route], tops[route])
        want[route][(band, "shown")] += 1
        votes = Counter(said)
        if votes["confirm"] != votes["veto"]:
            want[route][(band, "judged")] += 1
            want[route][(band, "confirmed")] += votes["confirm"] > votes["veto"]
    for route, counts in want.items():
        got = stats["routes"][route]
        bands = {round((b["low"] - lows[route]) / 0.05): b for b in got["bands"]}
        for (band, kind), n in counts.items():
            assert bands[band][kind] == n, (route, band, kind)
        assert sum(b["shown"] for b in got["bands"]) == got["shown"]
        for b in got["bands"]:
            assert b["precision"] == (b["confirmed"] / b["judged"] if b["judged"] else None)
    dup, sug = stats["routes"]["duplicate"], stats["routes"]["suggest"]
    # edges count above: 0.90 and 0.95 open their bands, 0.8999 and 0.7999 stay below
    assert [(b["low"], b["shown"], b["judged"], b["confirmed"]) for b in dup["bands"]] == [
        (0.85, 2, 2, 1),
        (0.90, 2, 1, 1),
        (0.95, 3, 2, 2),  # 0.95, 1.0000001, the tied 0.97
    ]
    assert [b["low"] for b in sug["bands"]] == [0.60, 0.65, 0.70, 0.75, 0.80, 0.85]
    assert [(b["shown"], b["judged"]) for b in sug["bands"]] == [
        (1, 1),
        (0, 0),
        (2, 1),
        (2, 2),
        (1, 1),
        (1, 1),
    ]
    assert (dup["shown"], dup["judged"], dup["confirmed"], dup["precision"]) == (7, 5, 4, 0.8)
    assert (sug["shown"], sug["judged"], sug["confirmed"]) == (7, 6, 3)
    assert stats["awaiting"] == 2 and stats["tied"] == 1

    # the very labels `triage calibrate --feedback` learns from
    fb = load_feedback(engine)
    assert stats["verdicts"] == fb.verdicts == 16
    assert stats["tied"] == fb.conflicting and stats["unscored"] == fb.unscored == 0
    assert dup["judged"] + sug["judged"] == len(fb.scores)
    assert dup["confirmed"] + sug["confirmed"] == int(fb.labels.sum())

    # and the dashboard's numbers are these
    data = client.get("/dashboard/data", headers={"Authorization": f"Bearer {READ}"}).json()
    assert data["review"] == stats


# --- an agent in a real browser ----------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = chromium_binary()
    for flag in [*CHROMIUM_FLAGS, "--window-size=1280,900"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(
        options=options, service=ChromeService(executable_path=chromedriver_binary())
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def reviewing(
    worker_settings: Callable[..., Settings],
) -> Iterator[tuple[str, Settings, Engine]]:
    """The served app on SQLite with 60 decisions to review, r00 the newest; r01 its match."""
    settings = worker_settings(api_tokens=TOKENS)
    engine = db.make_engine(settings.database_url)
    now = datetime.now(UTC)
    rows, texts = [], [ticket("github", "acme/app#1", "Login broken", "Cannot log in since 9:00.")]
    for i in range(60):
        key = f"r{i:02d}"
        rows.append(
            decision(
                key,
                "duplicate" if i % 2 == 0 else "suggest",
                0.9 if i % 2 == 0 else 0.75,
                now - timedelta(minutes=i),
                source="email",
                queue="support",
                matches=[{"source": "github", "ticket_id": "acme/app#1", "score": 0.9}],
            )
        )
        texts.append(ticket("email", key, f"Login fails ({key})", f"Body of {key}."))
    with engine.begin() as conn:
        conn.execute(insert(db.DecisionRow), rows)
        conn.execute(insert(db.TicketRow), texts)
    with served_app(create_app(settings)) as url:
        yield url, settings, engine
    engine.dispose()


def selected(driver: webdriver.Chrome) -> str | None:
    """The ticket id of the selected decision once it has the focus, else None."""
    try:
        active = driver.switch_to.active_element
        if "selected" in (active.get_attribute("class") or "").split():
            return active.get_attribute("data-ticket-id")
    except StaleElementReferenceException:
        pass
    return None


def press(driver: webdriver.Chrome, key: str) -> None:
    ActionChains(driver).send_keys(key).perform()


def on_page(driver: webdriver.Chrome) -> list[str]:
    for _ in range(5):
        try:
            items = driver.find_elements(By.CSS_SELECTOR, "[data-testid='review-item']")
            return [str(e.get_attribute("data-ticket-id")) for e in items]
        except StaleElementReferenceException:
            continue
    raise AssertionError("the page kept changing")


def open_queue(browser: webdriver.Chrome, url: str) -> WebDriverWait[webdriver.Chrome]:
    """Signs in as agent "ana" with a sign-in link and waits for the first page."""
    wait = WebDriverWait(browser, 15)
    browser.get(f"{url}/dashboard/review?token={AGENT}&agent=ana")
    wait.until(lambda d: len(on_page(d)) == 25)
    return wait


def test_keyboard_review_in_chromium(
    browser: webdriver.Chrome, reviewing: tuple[str, Settings, Engine]
) -> None:
    url, _, engine = reviewing
    wait = open_queue(browser, url)
    assert browser.current_url == f"{url}/dashboard/review"  # the token left the address
    help_line = browser.find_element(By.CSS_SELECTOR, "[data-testid='review-help']").text
    assert all(k in help_line for k in ("j next", "k previous", "c confirm", "v not a duplicate"))
    # side by side: the new ticket and its match, with texts and the GitHub link
    first = browser.find_element(By.CSS_SELECTOR, "[data-testid='review-item']")
    new = first.find_element(By.CSS_SELECTOR, ".review-new").rect
    match = first.find_element(By.CSS_SELECTOR, ".review-matches").rect
    assert match["x"] > new["x"] + new["width"] - 1 and abs(match["y"] - new["y"]) < 2
    assert "Body of r00." in first.text and "Cannot log in since 9:00." in first.text
    link = first.find_element(By.CSS_SELECTOR, "[data-testid='review-match-link']")
    assert link.get_attribute("href") == "https://github.com/acme/app/issues/1"

    press(browser, "j")
    wait.until(lambda d: selected(d) == "r00")
    # the focus is visible: an outline on the selected decision
    outline = browser.execute_script(
        "var s = getComputedStyle(document.activeElement); return [s.outlineStyle, s.outlineWidth];"
    )
    assert outline[0] != "none" and outline[1] != "0px", outline
    press(browser, "c")
    wait.until(lambda d: "r00" not in on_page(d))
    (row,) = feedback_rows(engine)
    assert (row.source, row.ticket_id, row.verdict, row.agent) == ("email", "r00", "confirm", "ana")
    # the next decision took the selection: v vetoes it
    wait.until(lambda d: selected(d) == "r01")
    press(browser, "v")
    wait.until(lambda d: "r01" not in on_page(d))
    assert [(f.ticket_id, f.verdict) for f in feedback_rows(engine)] == [
        ("r00", "confirm"),
        ("r01", "veto"),
    ]
    # j / k move without a verdict; no reload happened (the page counts its own verdicts)
    press(browser, "j")
    wait.until(lambda d: selected(d) == "r03")
    press(browser, "k")
    wait.until(lambda d: selected(d) == "r02")
    body = browser.find_element(By.TAG_NAME, "body")
    assert body.get_attribute("data-reviewed") == "2"
    assert browser.find_element(By.CSS_SELECTOR, "[data-testid='review-waiting']").text == "58"
    assert len(feedback_rows(engine)) == 2
    # the button works too
    browser.find_elements(By.CSS_SELECTOR, "[data-testid='review-veto']")[0].click()
    wait.until(lambda d: "r02" not in on_page(d))
    assert feedback_rows(engine)[-1].verdict == "veto"


def test_fifty_decisions_reviewed_with_the_keyboard_alone(
    browser: webdriver.Chrome, reviewing: tuple[str, Settings, Engine]
) -> None:
    url, _, engine = reviewing
    wait = open_queue(browser, url)
    press(browser, "j")
    said: list[tuple[str, str]] = []
    for n in range(50):
        # as an agent does: read which decision is selected, then judge it
        wait.until(lambda d: selected(d) is not None)
        current = selected(browser)
        assert current is not None and current not in [t for t, _ in said]
        key = "c" if n % 3 else "v"
        press(browser, key)
        said.append((current, "confirm" if key == "c" else "veto"))
        wait.until(lambda d, current=current: selected(d) != current)
    body = browser.find_element(By.TAG_NAME, "body")
    wait.until(lambda d: body.get_attribute("data-reviewed") == "50")
    # 50 rows, the newest 50 decisions in order, each with the verdict pressed
    stored = [(f.ticket_id, f.verdict, f.agent) for f in feedback_rows(engine)]
    assert len(stored) == 50
    assert sorted(stored) == sorted((t, v, "ana") for t, v in said)
    assert [t for t, _ in said] == [f"r{i:02d}" for i in range(50)]
    # the pages after the first came in as the queue emptied (keyset, 25 a page)
    deadline = time.monotonic() + 10
    while on_page(browser) != [f"r{i:02d}" for i in range(50, 60)]:
        assert time.monotonic() < deadline, on_page(browser)
        time.sleep(0.1)
    assert browser.find_element(By.CSS_SELECTOR, "[data-testid='review-waiting']").text == "10"

    # the dashboard shows what these reviews measured
    browser.get(f"{url}/dashboard")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-refreshes") != "0")
    stats = queries.review_stats(engine, THRESHOLDS)
    for route in ("duplicate", "suggest"):
        row = browser.find_element(
            By.CSS_SELECTOR, f"[data-testid='precision-route'][data-route='{route}']"
        )
        shown = stats["routes"][route]
        assert int(str(row.get_attribute("data-judged"))) == shown["judged"] == 25
        assert int(str(row.get_attribute("data-confirmed"))) == shown["confirmed"]
        assert float(str(row.get_attribute("data-precision"))) == pytest.approx(shown["precision"])
    awaiting = browser.find_element(By.CSS_SELECTOR, "[data-testid='review-awaiting']").text
    assert awaiting == "10"


def test_a_re_decided_decision_says_so(client: TestClient, engine: Engine) -> None:
    seed_queue(engine, datetime.now(UTC))
    at = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    with Session(engine) as session:
        session.execute(
            update(db.DecisionRow).where(db.DecisionRow.ticket_id == "q00").values(redecided_at=at)
        )
        session.commit()
    page = queries.review_queue(engine, limit=100, cursor=None, route=None, queue=None, source=None)
    marked = {i["ticket_id"]: i["redecided_at"] for i in page["items"] if i["redecided_at"]}
    assert marked == {"q00": "2026-12-05T09:30:00Z"}
    r = client.get("/dashboard/review", headers={"Authorization": f"Bearer {READ}"})
    assert r.text.count("data-testid='review-redecided'") == 1
    assert "re-decided after an edit 2026-12-05 09:30 UTC" in r.text
