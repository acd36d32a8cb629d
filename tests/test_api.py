"""`triage serve` on real Redis and a real database: webhooks in, decisions out.

The app runs in-process through Starlette's TestClient (real ASGI app, real Redis, real
SQLite/PostgreSQL); the worker is a real `celery worker` process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from config.settings import Settings
from service.app import create_app
from tests.conftest import FIXTURES, WorkerProcess, n_rows, rows, wait_for
from tests.services import free_port
from tests.vendors import signed_headers
from tickets import db

HOOKS = FIXTURES / "webhooks"
SECRET = "test-secret"
TOKENS = {"reader": ["read"], "agent": ["read", "feedback"], "feeder": ["ingest"]}
READ = {"Authorization": "Bearer reader"}
AGENT = {"Authorization": "Bearer agent"}
FEED = {"Authorization": "Bearer feeder", "Content-Type": "application/json"}


def signatures() -> dict[str, Any]:
    return json.loads((HOOKS / "signatures.json").read_text())  # type: ignore[no-any-return]


def vendor_request(vendor: str, *, fresh_zendesk: bool = True) -> tuple[bytes, dict[str, str]]:
    """A sample body with the headers its vendor would send, signed with the test secret."""
    sig = signatures()
    h = {"Content-Type": "application/json"}
    if vendor == "github":
        body = (HOOKS / "github_issues_opened.json").read_bytes()
        h |= {
            "X-GitHub-Event": "issues",
            "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "X-Hub-Signature-256": sig["github_issues_opened.json"]["X-Hub-Signature-256"],
        }
    elif vendor == "jira":
        body = (HOOKS / "jira_issue_created.json").read_bytes()
        h |= {
            "X-Atlassian-Webhook-Identifier": "jira-delivery-1",
            "X-Hub-Signature": sig["jira_issue_created.json"]["X-Hub-Signature"],
        }
    elif vendor == "zammad":
        body = (HOOKS / "zammad_ticket_created.json").read_bytes()
        h |= {
            "X-Zammad-Delivery": "zammad-job-1",
            "X-Hub-Signature": sig["zammad_ticket_created.json"]["X-Hub-Signature"],
        }
    elif vendor == "helpscout":
        body = (HOOKS / "helpscout_convo.created.json").read_bytes()
        h |= {
            "X-HelpScout-Event": "convo.created",
            "X-HelpScout-Signature": sig["helpscout_convo.created.json"]["X-HelpScout-Signature"],
        }
    elif vendor == "freshdesk":
        body = (HOOKS / "freshdesk_ticket_created.json").read_bytes()
        h |= {"X-Webhook-Token": SECRET}
    elif vendor == "zendesk":
        body = (HOOKS / "zendesk_ticket_created.json").read_bytes()
        if fresh_zendesk:  # the worked value's 2021 timestamp is stale now: sign a fresh one
            ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            mac = base64.b64encode(
                hmac.new(SECRET.encode(), ts.encode() + body, hashlib.sha256).digest()
            ).decode()
        else:
            ts = sig["zendesk_ticket_created.json"]["X-Zendesk-Webhook-Signature-Timestamp"]
            mac = sig["zendesk_ticket_created.json"]["X-Zendesk-Webhook-Signature"]
        h |= {
            "X-Zendesk-Webhook-Signature-Timestamp": ts,
            "X-Zendesk-Webhook-Signature": mac,
            "X-Zendesk-Webhook-Invocation-Id": "zd-invocation-1",
        }
    else:
        raise AssertionError(vendor)
    return body, h


VENDORS = ["zendesk", "github", "jira", "freshdesk", "zammad", "helpscout"]


@pytest.fixture
def api_settings(worker_settings: Callable[..., Settings]) -> Settings:
    return worker_settings(
        webhook_secrets={v: ["rotated-new-secret", SECRET] for v in VENDORS},
        api_tokens=TOKENS,
        max_body_bytes=64 * 1024,
    )


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as c:
        yield c
    r = redis.Redis.from_url(api_settings.redis_url)
    for key in r.scan_iter("triage:seen:*"):
        r.delete(key)


def queued(settings: Settings, task: str = "triage.ticket") -> list[dict[str, Any]]:
    """The tickets (or, with ``task="triage.update"``, the updates) waiting on the queue,
    decoded from the Celery messages."""
    r = redis.Redis.from_url(settings.redis_url)
    out = []
    for raw in r.lrange(settings.queue, 0, -1):
        msg = json.loads(raw)
        if msg["headers"]["task"] not in (
            task,
            "triage.tickets" if task == "triage.ticket" else task,
        ):
            continue
        args, _kwargs, _ = json.loads(base64.b64decode(msg["body"]))
        out.append(args[0])
    return out


def test_update_webhooks_queue_an_update(client: TestClient, api_settings: Settings) -> None:
    body = json.loads((HOOKS / "github_issues_opened.json").read_bytes())
    body.update(action="closed")
    body["issue"].update(state="closed", state_reason="duplicate")
    raw = json.dumps(body).encode()
    r = client.post("/v1/hooks/github", content=raw, headers=signed_headers("github", raw, SECRET))
    assert r.status_code == 202, r.text
    assert r.json()["tickets"] == [{"key": "github:Codertocat/Hello-World#1", "status": "update"}]
    (update,) = queued(api_settings, "triage.update")
    assert (update["status"], update["duplicate"], update["event"]) == (
        "closed",
        True,
        "issues.closed",
    )
    assert queued(api_settings) == []
    # A Zammad delivery is a creation and an update: the second time, the creation is a
    # duplicate and the update is queued again (the worker applies it only if it changed).
    zbody, zheaders = vendor_request("zammad")
    for _ in range(2):
        client.post(
            "/v1/hooks/zammad", content=zbody, headers={**zheaders, "X-Zammad-Delivery": str(_)}
        )
    assert len(queued(api_settings)) == 1
    assert sorted(u["source"] for u in queued(api_settings, "triage.update")) == [
        "github",
        "zammad",
        "zammad",
    ]


# --- ingest ----------------------------------------------------------------------------------


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_sample_accepted_and_queued_once(
    client: TestClient, api_settings: Settings, vendor: str
) -> None:
    body, headers = vendor_request(vendor)
    r = client.post(f"/v1/hooks/{vendor}", content=body, headers=headers)
    assert r.status_code == 202, r.text
    (item,) = r.json()["tickets"]
    assert item["status"] == "accepted" and item["key"].startswith(f"{vendor}:")
    (ticket,) = queued(api_settings)
    assert ticket["source"] == vendor and item["key"] == f"{vendor}:{ticket['ticket_id']}"
    assert ticket["body"] or ticket["subject"]
    assert "<div" not in ticket["body"] and "<p>" not in ticket["body"]  # HTML reduced to text
    # a redelivery (same delivery id, or same ticket) is answered without a second ticket
    again = client.post(f"/v1/hooks/{vendor}", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["tickets"][0]["status"] == "duplicate"
    assert len(queued(api_settings)) == 1


def test_canonical_tickets_of_the_samples(client: TestClient, api_settings: Settings) -> None:
    for vendor in VENDORS:
        body, headers = vendor_request(vendor)
        assert client.post(f"/v1/hooks/{vendor}", content=body, headers=headers).status_code == 202
    t = {m["source"]: m for m in queued(api_settings)}
    assert (
        t["github"]["ticket_id"] == "Codertocat/Hello-World#1"
        and t["github"]["subject"] == "Spelling error in the README file"
    )
    assert t["jira"]["ticket_id"] == "KAN-22"
    jira_created = datetime.fromisoformat(t["jira"]["created_at"])  # +0530, kept as an instant
    assert jira_created == datetime(2024, 12, 29, 3, 11, 23, 303000, tzinfo=UTC)
    assert t["freshdesk"]["body"] and "\u2603" in t["freshdesk"]["body"] + t["freshdesk"]["subject"]


@pytest.mark.parametrize(
    ("vendor", "change", "fragment"),
    [
        ("github", lambda h: h.pop("X-Hub-Signature-256"), "X-Hub-Signature-256"),
        ("github", lambda h: h.update({"X-Hub-Signature-256": "sha256=" + "0" * 64}), "signature"),
        (
            "github",
            lambda h: h.update(
                {"X-Hub-Signature-256": "sha1=1d21d07a143e00ffada16672a5ee2f72b4a4c1b6"}
            ),
            "sha256=",
        ),
        ("zammad", lambda h: h.update({"X-Hub-Signature": "sha256=" + "0" * 64}), "sha1="),
        ("freshdesk", lambda h: h.update({"X-Webhook-Token": "guess"}), "token"),
        ("helpscout", lambda h: h.pop("X-HelpScout-Signature"), "X-HelpScout-Signature"),
    ],
)
def test_bad_signatures_are_401(
    client: TestClient,
    api_settings: Settings,
    vendor: str,
    change: Callable[[dict[str, str]], Any],
    fragment: str,
) -> None:
    body, headers = vendor_request(vendor)
    change(headers)
    r = client.post(f"/v1/hooks/{vendor}", content=body, headers=headers)
    assert r.status_code == 401, r.text
    assert fragment.lower() in r.json()["detail"].lower()
    assert queued(api_settings) == []


def test_stale_zendesk_timestamp_and_tampered_body_are_401(client: TestClient) -> None:
    body, headers = vendor_request("zendesk", fresh_zendesk=False)  # the worked 2021 signature
    r = client.post("/v1/hooks/zendesk", content=body, headers=headers)
    assert r.status_code == 401 and "tolerance" in r.json()["detail"]
    body, headers = vendor_request("github")
    r = client.post(
        "/v1/hooks/github", content=body.replace(b"Spelling", b"Spellink"), headers=headers
    )
    assert r.status_code == 401


def test_unconfigured_vendor_is_refused(worker_settings: Callable[..., Settings]) -> None:
    settings = worker_settings()  # no secrets at all
    with TestClient(create_app(settings)) as c:
        body, headers = vendor_request("github")
        assert c.post("/v1/hooks/github", content=body, headers=headers).status_code == 401


def test_malformed_requests_name_the_problem(client: TestClient, api_settings: Settings) -> None:
    r = client.post("/v1/tickets", content=b'{"source": "email", "ticket_id": ', headers=FEED)
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = client.post(
        "/v1/tickets", content=json.dumps({"source": "email", "body": "x"}), headers=FEED
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "ticket_id"]
    r = client.post(
        "/v1/tickets",
        content=json.dumps(
            [
                {"source": "email", "ticket_id": "1", "body": "ok"},
                {"source": "BAD SOURCE", "ticket_id": "2", "body": "x"},
            ]
        ),
        headers=FEED,
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", 1, "source"]
    r = client.post(
        "/v1/tickets", content=b"id,body\n1,x", headers={**FEED, "Content-Type": "text/csv"}
    )
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    r = client.post("/v1/tickets", content=b"x" * (api_settings.max_body_bytes + 1), headers=FEED)
    assert r.status_code == 413
    body, headers = vendor_request("github")
    payload = json.loads(body)
    del payload["issue"]["number"]
    raw = json.dumps(payload).encode()
    headers["X-Hub-Signature-256"] = (
        "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    )
    r = client.post("/v1/hooks/github", content=raw, headers=headers)
    assert r.status_code == 422 and "issue" in json.dumps(r.json()["detail"])
    assert queued(api_settings) == []


def test_tokens_and_scopes(client: TestClient) -> None:
    ticket = {"source": "email", "ticket_id": "1", "body": "Printer is on fire"}
    assert client.post("/v1/tickets", json=ticket).status_code == 401
    assert (
        client.post(
            "/v1/tickets", json=ticket, headers={"Authorization": "Bearer nope"}
        ).status_code
        == 401
    )
    assert client.post("/v1/tickets", json=ticket, headers=READ).status_code == 403
    assert (
        client.get("/v1/decisions", headers={"Authorization": "Bearer feeder"}).status_code == 403
    )
    assert client.get("/v1/decisions").status_code == 401


def test_generic_ingest_one_or_many(client: TestClient, api_settings: Settings) -> None:
    r = client.post(
        "/v1/tickets",
        json={"source": "email", "ticket_id": "m1", "body": "Printer is on fire"},
        headers=FEED,
    )
    assert r.status_code == 202 and r.json() == {
        "tickets": [{"key": "email:m1", "status": "accepted"}]
    }
    many = [
        {"source": "email", "ticket_id": f"m{i}", "subject": "s", "body": f"b{i}"}
        for i in range(1, 4)
    ]
    r = client.post("/v1/tickets", json=many, headers=FEED)
    assert r.status_code == 202
    assert [t["status"] for t in r.json()["tickets"]] == ["duplicate", "accepted", "accepted"]
    assert sorted(m["ticket_id"] for m in queued(api_settings)) == ["m1", "m2", "m3"]


def test_broker_down_is_503_and_nothing_is_half_accepted(
    api_settings: Settings, client: TestClient
) -> None:
    down = api_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    body, headers = vendor_request("github")
    with TestClient(create_app(down)) as c:
        r = c.post("/v1/hooks/github", content=body, headers=headers)
        assert r.status_code == 503 and r.headers["Retry-After"] == "30"
        assert "retry" in r.json()["detail"]
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "reason": "redis unreachable"}
    # Redis back: the sender's retry is a fresh acceptance, not a "duplicate"
    r = client.post("/v1/hooks/github", content=body, headers=headers)
    assert r.status_code == 202 and r.json()["tickets"][0]["status"] == "accepted"
    assert len(queued(api_settings)) == 1


def test_health_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"ready": True, "reason": "ok"}
    status = client.get("/v1/status", headers=READ)
    assert status.status_code == 200, status.text
    assert set(status.json()["checks"]) == {"redis", "database", "embedder", "queue", "workers"}
    spec = client.get("/openapi.json").json()
    for vendor in VENDORS:
        assert f"/v1/hooks/{vendor}" in spec["paths"]
    assert "/v1/decisions/{source}/{ticket_id}/feedback" in spec["paths"]


# --- end to end: webhook -> worker -> read API -------------------------------------------------


def test_webhooks_to_decisions_through_a_real_worker(
    client: TestClient,
    api_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    sqlite_url: str,
) -> None:
    start_worker(api_settings)
    for vendor in VENDORS:
        body, headers = vendor_request(vendor)
        assert client.post(f"/v1/hooks/{vendor}", content=body, headers=headers).status_code == 202
    wait_for(
        lambda: n_rows(sqlite_url, db.DecisionRow) == len(VENDORS), 60, "the vendors' decisions"
    )

    one = client.get(
        "/v1/decisions/github/Codertocat/Hello-World%231", headers=READ
    )  # ids may hold '/'
    assert one.status_code == 200 and one.json()["ticket_id"] == "Codertocat/Hello-World#1"
    assert client.get("/v1/decisions/github/nope", headers=READ).status_code == 404
    page = client.get("/v1/decisions", params={"limit": 4}, headers=READ).json()
    assert len(page["decisions"]) == 4 and page["next_cursor"]
    rest = client.get(
        "/v1/decisions", params={"limit": 4, "cursor": page["next_cursor"]}, headers=READ
    ).json()
    assert len(rest["decisions"]) == 2 and rest["next_cursor"] is None
    keys = {(d["source"], d["ticket_id"]) for d in page["decisions"] + rest["decisions"]}
    assert {s for s, _ in keys} == set(VENDORS)
    jira = client.get("/v1/decisions/jira/KAN-22", headers=READ)
    assert jira.status_code == 200 and jira.json()["route"] in ("duplicate", "suggest", "manual")
    assert (
        jira.json()["latency_ms"] is not None and jira.json()["model"] == "local:all-MiniLM-L6-v2"
    )

    # a near-copy of the GitHub issue, through the generic endpoint: a duplicate
    gh = json.loads(vendor_request("github")[0])["issue"]
    copy = {
        "source": "email",
        "ticket_id": "copy-1",
        "subject": gh["title"],
        "body": gh["body"] or "",
    }
    assert client.post("/v1/tickets", json=copy, headers=FEED).status_code == 202
    wait_for(
        lambda: n_rows(sqlite_url, db.DecisionRow) == len(VENDORS) + 1, 60, "the copy's decision"
    )
    dup = client.get("/v1/decisions/email/copy-1", headers=READ).json()
    assert dup["route"] == "duplicate" and dup["canonical_source"] == "github"

    fb = {"verdict": "confirm", "agent": "ana@example.com"}
    assert (
        client.post("/v1/decisions/email/copy-1/feedback", json=fb, headers=READ).status_code == 403
    )
    r = client.post("/v1/decisions/email/copy-1/feedback", json=fb, headers=AGENT)
    assert r.status_code == 201 and r.json()["route"] == "duplicate"
    r = client.post(
        "/v1/decisions/email/copy-1/feedback", json={**fb, "verdict": "veto"}, headers=AGENT
    )
    assert r.status_code == 201
    assert n_rows(sqlite_url, db.FeedbackRow) == 1  # one verdict per agent, the latest
    manual = next(d for d in page["decisions"] + rest["decisions"] if d["route"] == "manual")
    r = client.post(
        f"/v1/decisions/{manual['source']}/{manual['ticket_id']}/feedback", json=fb, headers=AGENT
    )
    assert r.status_code in (404, 409)
    assert (
        client.post("/v1/decisions/email/nope/feedback", json=fb, headers=AGENT).status_code == 404
    )

    stats = client.get("/v1/stats/routes", params={"bucket": "day"}, headers=READ).json()
    assert sum(s["count"] for s in stats) == len(VENDORS) + 1
    assert {s["route"] for s in stats} <= {"duplicate", "suggest", "manual"}

    metrics = client.get("/metrics").text
    assert 'triage_tickets_accepted_total{source="github"} 1.0' in metrics
    assert 'triage_decisions_total{route="duplicate"}' in metrics
    assert "triage_end_to_end_latency_seconds_count 7.0" in metrics
    assert "triage_queue_depth 0.0" in metrics
    assert "triage_tickets_rejected_total" not in metrics or 'reason="signature"' not in metrics


def test_readme_curl_examples_exist() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for vendor in VENDORS:
        assert f"/v1/hooks/{vendor}" in readme


def test_github_updates_through_the_webhook_and_a_real_worker(
    client: TestClient,
    api_settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    sqlite_url: str,
) -> None:
    """The loop guard and the helpdesk's feedback, from signed GitHub deliveries."""
    worker = start_worker(api_settings)
    opened = json.loads((HOOKS / "github_issues_opened.json").read_bytes())

    def post(event: str, action: str, number: int, **extra: Any) -> None:
        body = json.loads(json.dumps(opened))
        body["action"] = action
        body["issue"].update(number=number, **extra.pop("issue", {}))
        body.update(extra)
        raw = json.dumps(body).encode()
        headers = signed_headers("github", raw, SECRET, {"X-GitHub-Event": event})
        r = client.post("/v1/hooks/github", content=raw, headers=headers)
        assert r.status_code == 202, r.text

    def key_rows(model: type[Any], number: int) -> list[Any]:
        return [r for r in rows(sqlite_url, model) if r.ticket_id.endswith(f"#{number}")]

    post("issues", "opened", 1)
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 1, 60, "issue 1")
    post("issues", "opened", 2)
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 2, 60, "issue 2")
    (two,) = key_rows(db.DecisionRow, 2)
    assert two.route == "duplicate" and two.matched_ticket_id.endswith("#1")
    (before,) = key_rows(db.TicketRow, 2)

    # The product's own label and comment (what its write-back does) come back: nothing.
    label = {"id": 1, "name": "triage-duplicate", "color": "ededed", "default": False}
    post("issues", "labeled", 2, label=label, issue={"updated_at": "2026-01-01T00:00:00Z"})
    comment = {"id": 9, "body": "Likely a duplicate\n<!-- ticket-triage:a-1 -->"}
    post("issue_comment", "created", 2, comment={**comment, "created_at": "2026-01-01T00:01:00Z"})
    wait_for(lambda: worker.log().count("'own'") >= 2, 60, "both own changes")
    (after,) = key_rows(db.TicketRow, 2)
    assert (after.id, after.vector, after.body) == (before.id, before.vector, before.body)
    assert n_rows(sqlite_url, db.FeedbackRow) == 0

    # An agent removes the label: a veto; closes the issue as a duplicate: a confirm.
    post("issues", "unlabeled", 2, label=label, issue={"updated_at": "2026-01-01T00:02:00Z"})
    wait_for(lambda: [r.verdict for r in rows(sqlite_url, db.FeedbackRow)] == ["veto"], 60, "veto")
    closed = {"state": "closed", "state_reason": "duplicate", "updated_at": "2026-01-01T00:03:00Z"}
    post("issues", "closed", 2, issue=closed)
    wait_for(
        lambda: [r.verdict for r in rows(sqlite_url, db.FeedbackRow)] == ["confirm"], 60, "confirm"
    )
    (fb,) = rows(sqlite_url, db.FeedbackRow)
    assert fb.agent == "helpdesk:github" and fb.route == "duplicate"
    wait_for(lambda: key_rows(db.TicketRow, 2)[0].status == "closed", 60, "status")
    assert n_rows(sqlite_url, db.DecisionRow) == 2 and n_rows(sqlite_url, db.FailureRow) == 0
