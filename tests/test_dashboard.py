"""The dashboard of `triage serve`: sign-in, the numbers against SQL, and a real browser.

The HTTP tests run the real app in-process (TestClient, real Redis, SQLite and PostgreSQL).
The browser test serves the app with uvicorn on a free port, triages the bundled sample
tickets through the real pipeline (local model, embedded Chroma, SQLite), and loads the page
in Debian's headless Chromium: the numbers it shows after its script ran are compared with
SQL, and a screenshot is saved under the test's tmp_path.
"""

from __future__ import annotations

import logging
import math
import re
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.orm import Session

from cli.demo import sample_path
from config.settings import Settings
from producer.importer import read_tickets
from service.app import create_app
from service.queries import read_dashboard
from service.routers.dashboard import COOKIE, SESSION_S, RedactToken, session_cookie
from tests.services import CHROMIUM_FLAGS, chromium_binary, served_app
from tickets import db, outbox
from tickets.model import Ticket, TicketKey
from worker.embedding.local import LocalEmbedder
from worker.pipeline import Services, WorkItem, triage_batch
from worker.routing import Thresholds
from worker.store import VectorStore

READ_TOKEN = "rd-7f3a9c2e51d04b"  # distinctive, so "not in the page" means something
INGEST_TOKEN = "in-0b1c2d3e4f5a6b"
TOKENS = {READ_TOKEN: ["read"], INGEST_TOKEN: ["ingest"]}
BEARER = {"Authorization": f"Bearer {READ_TOKEN}"}
ROUTES = ("duplicate", "suggest", "manual")


@pytest.fixture
def dash_settings(
    make_settings: Callable[..., Settings], database_url: str, queue_name: str
) -> Settings:
    return make_settings(database_url=database_url, queue=queue_name, api_tokens=TOKENS)


@pytest.fixture
def engine(dash_settings: Settings) -> Iterator[Engine]:
    engine = db.make_engine(dash_settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def client(dash_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(dash_settings)) as c:
        yield c


# --- sample rows -----------------------------------------------------------------------------


def decision(
    ticket_id: str,
    route: str,
    score: float | None,
    decided_at: datetime,
    canonical: str | None = None,
    subject: str | None = None,
) -> dict[str, Any]:
    return {
        "source": "t",
        "ticket_id": ticket_id,
        "route": route,
        "score": score,
        "matched_source": "t" if canonical else None,
        "matched_ticket_id": canonical,
        "canonical_source": "t",
        "canonical_ticket_id": canonical or ticket_id,
        "matches": [],
        "model": "local:all-MiniLM-L6-v2",
        "duplicate_threshold": 0.85,
        "suggest_threshold": 0.70,
        "queue": "billing",
        "subject": subject,
        "received_at": decided_at - timedelta(seconds=2),
        "decided_at": decided_at,
        "latency_ms": 2000,
    }


def failure(ticket_id: str, error_type: str, failed_at: datetime) -> dict[str, Any]:
    return {
        "source": "t",
        "ticket_id": ticket_id,
        "error_type": error_type,
        "reason": "r",
        "attempts": 1,
        "payload": {},
        "failed_at": failed_at,
    }


def seed(engine: Engine, now: datetime) -> None:
    def h(hours: int) -> datetime:
        return now - timedelta(hours=hours)

    rows = [
        decision("old", "manual", 0.30, h(60), subject="Older than the window"),
        decision("A", "manual", 0.41, h(5), subject="App crashes at login"),
        decision("A1", "duplicate", 0.91, h(4), "A"),
        decision("A2", "duplicate", 0.86, h(3), "A"),
        decision("A3", "duplicate", 0.85, h(2), "A"),
        decision("B/7#x", "suggest", 0.74, h(3), subject="Refund <b>twice</b>"),
        decision("B1", "duplicate", 0.97, h(1), "B/7#x"),
        decision("C", "manual", None, h(1)),
        decision("D", "suggest", 0.70, h(0)),
        decision("E", "manual", 0.6999, h(0)),
    ]
    with engine.begin() as conn:
        conn.execute(insert(db.DecisionRow), rows)
        conn.execute(
            insert(db.FailureRow),
            [
                failure("f1", "EmbeddingRejected", h(2)),
                failure("f2", "EmbeddingRejected", h(1)),
                failure("f3", "InvalidMessage", h(0)),
            ],
        )


SECRET_HOOK = "https://hooks.example.com/services/T0/B0/s3cr3t-path?token=q-s3cr3t"


def action(n: int, status: str, now: datetime, **extra: Any) -> dict[str, Any]:
    """An outbox row `n` minutes old in state `status`."""
    return {
        "action_id": f"msg_{n:04d}",
        "source": "t",
        "ticket_id": f"act-{n}",
        "kind": "webhook",
        "target": SECRET_HOOK,
        "payload": {"ticket_id": f"act-{n}"},
        "status": status,
        "attempts": extra.pop("attempts", 1),
        "next_attempt_at": now + timedelta(minutes=5),
        "created_at": now - timedelta(minutes=n),
        "last_status": None,
        "last_error": None,
        "delivered_at": None,
        **extra,
    }


def seed_actions(engine: Engine, now: datetime) -> None:
    """Delivered, pending, a retrying failure and two dead ones: three to list."""
    with Session(engine) as s:
        outbox.stage(
            s,
            [
                action(1, outbox.DELIVERED, now, delivered_at=now),
                action(2, outbox.DELIVERED, now, delivered_at=now),
                action(3, outbox.PENDING, now, attempts=0),
                action(4, outbox.FAILED, now, attempts=3, last_status=503, last_error="503 busy"),
                action(5, outbox.DEAD, now, last_status=410, last_error="410 <b>gone</b>"),
                action(6, outbox.DEAD, now, attempts=30, last_error="connection refused"),
            ],
        )
        s.commit()


# --- what SQL says, computed from the raw tables (not through the views) ---------------------


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime) -> str:
    return utc(value).isoformat().replace("+00:00", "Z")


def sql_truth(engine: Engine, now: datetime) -> dict[str, Any]:
    with Session(engine) as s:
        decisions = list(s.scalars(select(db.DecisionRow)))
        failures = list(s.scalars(select(db.FailureRow)))

    def hour(d: datetime) -> datetime:
        return utc(d).replace(minute=0, second=0, microsecond=0)

    end = hour(now)
    first = min(hour(d.decided_at) for d in decisions)
    start = max(first, end - timedelta(hours=47))
    hourly: Counter[tuple[str, str]] = Counter(
        (iso(hour(d.decided_at)), d.route) for d in decisions if hour(d.decided_at) >= start
    )
    clusters: Counter[tuple[str, str]] = Counter(
        (d.canonical_source, d.canonical_ticket_id) for d in decisions if d.route == "duplicate"
    )
    return {
        "routes": {r: sum(d.route == r for d in decisions) for r in ROUTES},
        "decisions": len(decisions),
        "hourly": hourly,
        "start": iso(start),
        "end": iso(end),
        "histogram": Counter(
            (min(math.floor(d.score * 20), 19), d.route) for d in decisions if d.score is not None
        ),
        "no_score": sum(d.score is None for d in decisions),
        "clusters": {k: n + 1 for k, n in clusters.items()},  # the root counts
        "failures": Counter(f.error_type for f in failures),
    }


# --- sign-in ---------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sign_in_cookie_and_refusals(client: TestClient) -> None:
    # no token: 401 with the sign-in form
    r = client.get("/dashboard")
    assert r.status_code == 401 and "data-testid='login-form'" in r.text
    assert client.get("/dashboard/data").status_code == 401
    assert client.get("/dashboard/clusters/t/A").status_code == 401
    # a wrong token, or one without the read scope: 401, no cookie, the token not echoed
    for bad in ("wrong-token-123", INGEST_TOKEN):
        r = client.get("/dashboard", params={"token": bad}, follow_redirects=False)
        assert r.status_code == 401 and "set-cookie" not in r.headers
        assert bad not in r.text and "not a token with the read scope" in r.text
        r = client.get("/dashboard/data", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401
    assert client.get("/dashboard", headers={"Authorization": "Basic abc"}).status_code == 401

    # the read token once: a cookie (not the token), and a redirect that drops the token
    r = client.get("/dashboard", params={"token": READ_TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and READ_TOKEN not in cookie
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/dashboard", f"Max-Age={SESSION_S}"):
        assert attribute.lower() in cookie.lower(), cookie
    page = client.get("/dashboard")
    assert page.status_code == 200 and "data-testid='total-decisions'" in page.text
    assert READ_TOKEN not in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'nonce-" in csp
    assert "unsafe-inline" not in csp
    # No inline script: the one script that runs is the page's file (service/static/).
    scripts = re.findall(r"<script[^>]*>", page.text)
    assert [s for s in scripts if "src=" not in s and "application/json" not in s] == []
    static = client.get("/dashboard/static/dashboard.js")
    assert static.status_code == 200 and "function drawHourly" in static.text
    assert page.headers["cache-control"] == "no-store"
    assert client.get("/dashboard/data").status_code == 200

    # a tampered or expired cookie is no session
    value = client.cookies[COOKIE]
    expires, _, mac = value.partition(".")
    for forged in (
        f"{int(expires) + 60}.{mac}",
        f"{expires}.{'0' * len(mac)}",
        session_cookie(READ_TOKEN, now=time.time() - SESSION_S - 5),
        session_cookie("not-a-configured-token"),
        "garbage",
    ):
        client.cookies.clear()
        client.cookies.set(COOKIE, forged, path="/dashboard")
        assert client.get("/dashboard/data").status_code == 401, forged
    client.cookies.clear()

    # the form: POST token=..., then back to the page it came from (never elsewhere)
    r = client.post(
        "/dashboard/login",
        content=f"token={READ_TOKEN}&next=%2Fclusters%2Ft%2FA",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/clusters/t/A"
    assert client.get("/dashboard/data").status_code == 200
    client.cookies.clear()
    r = client.post(
        "/dashboard/login",
        data={"token": READ_TOKEN, "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    r = client.post("/dashboard/logout", follow_redirects=False)
    assert r.status_code == 303 and COOKIE in r.headers["set-cookie"]
    assert client.get("/dashboard/data").status_code == 401
    r = client.post("/dashboard/login", data={"token": "nope"}, follow_redirects=False)
    assert r.status_code == 401 and "set-cookie" not in r.headers

    # uvicorn's access log line for a sign-in link hides the token
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/dashboard?token={READ_TOKEN}&x=1", "1.1", 303),
        None,
    )
    access_filters = logging.getLogger("uvicorn.access").filters
    assert len([f for f in access_filters if isinstance(f, RedactToken)]) == 1  # however many apps
    assert RedactToken().filter(record)
    assert record.getMessage().endswith('"GET /dashboard?token=[hidden]&x=1 HTTP/1.1" 303')

    # a bearer header works without a cookie (scripts)
    assert client.get("/dashboard", headers=BEARER).status_code == 200
    assert client.get("/dashboard/data", headers=BEARER).status_code == 200
    # not part of the published API
    assert not any(p.startswith("/dashboard") for p in client.get("/openapi.json").json()["paths"])


# --- the numbers -----------------------------------------------------------------------------


def test_data_equals_sql(client: TestClient, engine: Engine, dash_settings: Settings) -> None:
    seed(engine, datetime.now(UTC))
    r = redis.Redis.from_url(dash_settings.redis_url)
    r.rpush(dash_settings.queue, "x", "y", "z")  # three messages waiting
    data = client.get("/dashboard/data", headers=BEARER).json()
    truth = sql_truth(engine, datetime.fromisoformat(data["generated_at"]))

    assert data["totals"]["decisions"] == truth["decisions"] == 10
    assert data["totals"]["routes"] == truth["routes"]
    assert data["totals"]["failures"] == 3
    assert sum(data["totals"]["no_score"].values()) == truth["no_score"] == 1
    assert data["queue_depth"] == 3
    assert data["thresholds"] == {"duplicate": 0.85, "suggest": 0.70}

    h = data["hourly"]
    # a decision is older than 48 h: the series is the last 48 hours, up to this hour
    assert len(h["buckets"]) == 48 and h["buckets"][-1] == truth["end"]
    assert h["start"] == truth["start"] == h["buckets"][0]
    shown = Counter(
        {
            (bucket, route): n
            for route in ROUTES
            for bucket, n in zip(h["buckets"], h["routes"][route], strict=True)
            if n
        }
    )
    assert shown == truth["hourly"] and sum(shown.values()) == 9  # "old" is outside

    bins = data["histogram"]["bins"]
    assert [b["index"] for b in bins] == list(range(20))
    hist = Counter({(b["index"], route): n for b in bins for route, n in b["counts"].items() if n})
    assert hist == truth["histogram"]
    assert hist[(17, "duplicate")] == 2 and hist[(14, "suggest")] == 2  # 0.85, 0.86; 0.70, 0.74
    assert hist[(13, "manual")] == 1  # 0.6999 is below the suggest threshold's bucket

    clusters = {(c["source"], c["ticket_id"]): c["size"] for c in data["clusters"]}
    assert clusters == truth["clusters"] == {("t", "A"): 4, ("t", "B/7#x"): 2}
    assert [c["ticket_id"] for c in data["clusters"]] == ["A", "B/7#x"]  # biggest first
    top = data["clusters"][0]
    assert top["subject"] == "App crashes at login"
    assert top["first_seen"] < top["last_seen"]
    assert {f["error_type"]: f["failures"] for f in data["failures"]} == truth["failures"]

    # the page embeds the same numbers for its first paint, escaped inside <script>
    page = client.get("/dashboard", headers=BEARER).text
    assert "Refund \\u003cb\\u003etwice" in page and "<b>twice" not in page


def test_deliveries_panel_lists_the_failed_and_dead_newest_first(
    client: TestClient, engine: Engine
) -> None:
    now = datetime.now(UTC)
    empty = read_dashboard(engine, thresholds=Thresholds(0.85, 0.70), queue_depth=lambda: 0)
    assert empty["deliveries"] == {"totals": dict.fromkeys(outbox.STATUSES, 0), "failing": []}

    seed_actions(engine, now)
    data = client.get("/dashboard/data", headers=BEARER).json()["deliveries"]
    with Session(engine) as s:
        by_status = Counter(s.scalars(select(outbox.ActionRow.status)))
    assert data["totals"] == {st: by_status.get(st, 0) for st in outbox.STATUSES}
    assert data["totals"]["dead"] == 2 and data["totals"]["delivered"] == 2
    assert [a["action_id"] for a in data["failing"]] == ["msg_0004", "msg_0005", "msg_0006"]
    retrying, gone, _ = data["failing"]
    assert retrying["status"] == "failed" and retrying["attempts"] == 3
    assert retrying["last_status"] == 503 and retrying["next_attempt_at"] is not None
    assert gone["status"] == "dead" and gone["next_attempt_at"] is None
    # a read-only viewer sees where, not the secret in the webhook URL's path or query
    assert {a["target"] for a in data["failing"]} == {"https://hooks.example.com"}
    body = client.get("/dashboard/data", headers=BEARER).text
    assert "s3cr3t" not in body


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_series_starts_at_the_first_decision_when_recent(
    client: TestClient, engine: Engine
) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(db.DecisionRow),
            [
                decision("1", "manual", None, now - timedelta(hours=2)),
                decision("2", "manual", 0.5, now),
            ],
        )
    data = client.get("/dashboard/data", headers=BEARER).json()
    truth = sql_truth(engine, datetime.fromisoformat(data["generated_at"]))
    h = data["hourly"]
    first_hour = iso((now - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0))
    assert h["start"] == truth["start"] == first_hour and h["end"] == truth["end"]
    # two hours ago, an hour ago, this hour (and one more if the hour turned meanwhile)
    assert len(h["buckets"]) in (3, 4)
    shown = {b: n for b, n in zip(h["buckets"], h["routes"]["manual"], strict=True) if n}
    assert shown == {b: n for (b, _), n in truth["hourly"].items()}
    assert sum(shown.values()) == 2
    assert data["clusters"] == [] and data["failures"] == []


def test_empty_database_and_redis_down(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    settings = make_settings(
        database_url=sqlite_url, api_tokens=TOKENS, redis_url=f"redis://127.0.0.1:{closed}/0"
    )
    with TestClient(create_app(settings)) as c:
        data = c.get("/dashboard/data", headers=BEARER).json()
        assert data["totals"]["decisions"] == 0 and data["queue_depth"] is None
        assert len(data["hourly"]["buckets"]) == 1 and data["clusters"] == []
        assert c.get("/dashboard", headers=BEARER).status_code == 200


def test_cluster_page_lists_its_tickets(client: TestClient, engine: Engine) -> None:
    seed(engine, datetime.now(UTC))
    r = client.get("/dashboard/clusters/t/A", headers=BEARER)
    assert r.status_code == 200
    rows = r.text.count("data-testid='member-row'")
    assert rows == 4 and "data-testid='cluster-size'>4<" in r.text
    assert "0.910" in r.text and "0.850" in r.text  # the duplicates' scores
    # a ticket id with '/' and '#', percent-encoded as the page's links are
    r = client.get("/dashboard/clusters/t/B%2F7%23x", headers=BEARER)
    assert r.status_code == 200 and r.text.count("data-testid='member-row'") == 2
    assert "Refund &lt;b&gt;twice&lt;/b&gt;" in r.text  # subjects are escaped
    assert client.get("/dashboard/clusters/t/C", headers=BEARER).status_code == 404
    assert client.get("/dashboard/clusters/t/A").status_code == 401


# --- a real browser --------------------------------------------------------------------------


def run_chromium(binary: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="triage-chromium-") as profile:
        done = subprocess.run(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=5000",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


class DomTestIds(HTMLParser):
    """Every element with a data-testid: its attributes and its text."""

    VOID: ClassVar[set[str]] = {
        "area",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "wbr",
    }

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self._open: list[dict[str, Any] | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        item = {"tag": tag, **a, "text": ""} if "data-testid" in a else None
        if item is not None:
            self.found.append(item)
        if tag not in self.VOID:
            self._open.append(item)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self._open.pop()

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for item in self._open:
            if item is not None:
                item["text"] += data

    def all(self, testid: str) -> list[dict[str, Any]]:
        return [f for f in self.found if f["data-testid"] == testid]

    def one(self, testid: str) -> str:
        (item,) = self.all(testid)
        return str(item["text"]).strip()


def parse(dom: str) -> DomTestIds:
    parser = DomTestIds()
    parser.feed(dom)
    return parser


@pytest.fixture
def served(worker_settings: Callable[..., Settings]) -> Iterator[tuple[str, Settings]]:
    """`triage serve`'s app under uvicorn on a free port, in a thread."""
    settings = worker_settings(api_tokens=TOKENS)
    with served_app(create_app(settings)) as url:
        yield url, settings
    client = redis.Redis.from_url(settings.redis_url)
    for key in client.scan_iter("triage:*:browser-*"):
        client.delete(key)


def triage_samples(settings: Settings, tmp_path: Path) -> None:
    """Triage the bundled sample tickets through the real pipeline; spread them over hours."""
    tickets = [t for t in read_tickets(sample_path(), source="demo") if isinstance(t, Ticket)]
    embedder = LocalEmbedder()
    store = VectorStore.open(
        model_id=embedder.model_id,
        dimension=embedder.dimension,
        collection="tickets",
        path=tmp_path / "chroma-browser",
    )
    engine = db.make_engine(settings.database_url)
    services = Services(
        embedder=embedder,
        store=store,
        engine=engine,
        thresholds=Thresholds(settings.duplicate_threshold, settings.suggest_threshold),
        top_k=settings.top_k,
    )
    try:
        for i in range(0, len(tickets), 32):
            triage_batch([WorkItem(t) for t in tickets[i : i + 32]], services)
        # the first thirds were decided 5 and 2 hours ago: several bars, in ticket order
        # (new values computed here: SQLite cannot subtract an interval from its text form)
        d = db.DecisionRow
        shift = {t.ticket_id: 5 for t in tickets[:70]} | {t.ticket_id: 2 for t in tickets[70:140]}
        with engine.begin() as conn:
            moved = [
                {"rid": rid, "at": utc(at) - timedelta(hours=shift[tid])}
                for rid, tid, at in conn.execute(select(d.id, d.ticket_id, d.decided_at))
                if tid in shift
            ]
            conn.execute(
                update(d).where(d.id == bindparam("rid")).values(decided_at=bindparam("at")),
                moved,
            )
        with Session(engine) as s:
            for n, kind in enumerate(["EmbeddingRejected", "EmbeddingRejected", "InvalidMessage"]):
                db.record_failure(
                    s,
                    key=TicketKey("demo", f"poison-{n}"),
                    error_type=kind,
                    reason="the input length exceeds the context length",
                    attempts=1,
                    payload={"ticket_id": f"poison-{n}"},
                )
            s.commit()
    finally:
        store.close()
        engine.dispose()


def test_dashboard_in_a_real_browser(
    served: tuple[str, Settings], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = chromium_binary()
    url, settings = served
    triage_samples(settings, tmp_path)
    # two tickets waiting on the queue (no worker is running): the queue depth shown
    tag = uuid.uuid4().hex[:8]
    accepted = httpx.post(
        f"{url}/v1/tickets",
        json=[
            {"source": "email", "ticket_id": f"browser-{tag}-{i}", "body": "Printer on fire"}
            for i in range(2)
        ],
        headers={"Authorization": f"Bearer {INGEST_TOKEN}"},
        timeout=10,
    )
    assert accepted.status_code == 202, accepted.text

    engine = db.make_engine(settings.database_url)
    try:
        seed_actions(engine, datetime.now(UTC))
    finally:
        engine.dispose()

    dom = run_chromium(binary, f"{url}/dashboard?token={READ_TOKEN}", "--dump-dom").stdout
    page = parse(dom)
    assert READ_TOKEN not in dom
    # the script ran, and refreshed from /dashboard/data with the session cookie
    assert 'data-refreshes="0"' not in dom and "data-refreshes=" in dom
    assert page.one("live-status").startswith("live")

    engine = db.make_engine(settings.database_url)
    try:
        generated = page.one("updated-at").removesuffix(" UTC")
        truth = sql_truth(engine, datetime.fromisoformat(generated).replace(tzinfo=UTC))
    finally:
        engine.dispose()
    assert truth["decisions"] == 206 and truth["routes"]["duplicate"] > 0

    assert int(page.one("total-decisions")) == truth["decisions"]
    for route in ROUTES:
        assert int(page.one(f"route-total-{route}")) == truth["routes"][route]
    assert int(page.one("queue-depth")) == 2
    assert int(page.one("failures-total")) == 3
    assert int(page.one("no-score-total")) == truth["no_score"]

    bars = Counter(
        {(b["data-bucket"], b["data-route"]): int(b["data-count"]) for b in page.all("hourly-bar")}
    )
    assert bars == truth["hourly"] and len({b for b, _ in bars}) >= 3  # 5 h ago, 2 h ago, now

    hist = Counter(
        {
            (round(float(b["data-low"]) * 20), b["data-route"]): int(b["data-count"])
            for b in page.all("hist-bar")
        }
    )
    assert hist == truth["histogram"]
    lines = {line["data-kind"]: float(line["data-value"]) for line in page.all("threshold-line")}
    assert lines == {"duplicate": 0.85, "suggest": 0.70}

    rows = page.all("cluster-row")
    sizes = [int(s["text"]) for s in page.all("cluster-size")]
    top = sorted(truth["clusters"].values(), reverse=True)[: len(rows)]
    assert len(rows) == min(10, len(truth["clusters"])) and sizes == top
    for row, size in zip(rows, sizes, strict=True):
        assert truth["clusters"][(row["data-source"], row["data-ticket-id"])] == size

    failures = {
        f["data-error-type"]: int(c["text"])
        for f, c in zip(page.all("failure-row"), page.all("failure-count"), strict=True)
    }
    assert failures == truth["failures"] == {"EmbeddingRejected": 2, "InvalidMessage": 1}

    deliveries = page.all("delivery-row")
    assert [d["data-action-id"] for d in deliveries] == ["msg_0004", "msg_0005", "msg_0006"]
    assert [d["data-status"] for d in deliveries] == ["failed", "dead", "dead"]
    assert int(page.one("deliveries-dead")) == 2 and int(page.one("deliveries-pending")) == 1
    assert [t["text"] for t in page.all("delivery-target")] == ["https://hooks.example.com"] * 3
    assert page.all("delivery-error")[1]["text"] == "410 410 <b>gone</b>"  # text, not markup
    assert "s3cr3t" not in dom

    # click-through: the first cluster's link lists its tickets
    link = page.all("cluster-link")[0]["href"]
    cluster_dom = run_chromium(binary, f"{url}{link}?token={READ_TOKEN}", "--dump-dom").stdout
    cluster = parse(cluster_dom)
    assert len(cluster.all("member-row")) == sizes[0] == int(cluster.one("cluster-size"))
    assert READ_TOKEN not in cluster_dom

    shot = tmp_path / "dashboard.png"
    run_chromium(
        binary,
        f"{url}/dashboard?token={READ_TOKEN}",
        f"--screenshot={shot}",
        "--window-size=1280,900",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    with capsys.disabled():
        print(f"\ndashboard screenshot: {shot}")
