"""Update events of each helpdesk → TicketUpdate (producer/webhooks/adapters.py), with
payloads shaped as each vendor documents them: the fixtures of the creation events with the
fields the update events change."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from producer.webhooks import IgnoredEvent, adapt
from tickets.model import TicketUpdate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "webhooks"
RECEIVED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
GITHUB = {"X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}


def payload(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def update_of(vendor: str, body: Any, headers: dict[str, str] | None = None) -> TicketUpdate:
    delivery = adapt(vendor, body, headers or {}, received_at=RECEIVED)
    assert delivery.update is not None
    assert delivery.update.source == vendor
    return delivery.update


# --- GitHub: issues (edited, closed, reopened, deleted, labeled, unlabeled), issue_comment


def github(action: str, **issue: Any) -> dict[str, Any]:
    body = payload("github_issues_opened.json")
    body["action"] = action
    body["issue"].update(issue)
    return body


def test_github_edited_carries_the_new_text() -> None:
    body = github("edited", title="New title", body="New body", updated_at="2026-01-02T03:00:00Z")
    body["changes"] = {"title": {"from": body["issue"]["title"]}}
    u = update_of("github", body, {**GITHUB, "X-GitHub-Event": "issues"})
    assert (u.text, u.subject, u.body) == (True, "New title", "New body")
    assert u.ticket_id.endswith("#" + str(body["issue"]["number"]))
    assert u.updated_at == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    assert u.event == "issues.edited"


@pytest.mark.parametrize(
    ("reason", "status", "duplicate"),
    [
        ("completed", "solved", False),
        ("not_planned", "closed", False),
        ("duplicate", "closed", True),
    ],
)
def test_github_closed_maps_state_reason(reason: str, status: str, duplicate: bool) -> None:
    body = github("closed", state="closed", state_reason=reason)
    u = update_of("github", body, {**GITHUB, "X-GitHub-Event": "issues"})
    assert (u.status, u.duplicate, u.text) == (status, duplicate, False)


def test_github_reopened_deleted_labels_and_comments() -> None:
    h = {**GITHUB, "X-GitHub-Event": "issues"}
    assert update_of("github", github("reopened"), h).status == "open"
    assert update_of("github", github("deleted"), h).status == "deleted"
    body = github("labeled")
    body["label"] = {"id": 1, "name": "triage-duplicate", "color": "ededed"}
    assert update_of("github", body, h).tags_added == ("triage-duplicate",)
    body["action"] = "unlabeled"
    assert update_of("github", body, h).tags_removed == ("triage-duplicate",)
    body = github("created")
    body["comment"] = {"id": 7, "body": "a note", "created_at": "2026-01-02T03:00:00Z"}
    u = update_of("github", body, {**GITHUB, "X-GitHub-Event": "issue_comment"})
    assert (u.note, u.event) == ("a note", "issue_comment.created")
    body["action"] = "edited"
    with pytest.raises(IgnoredEvent, match="issue_comment"):
        adapt("github", body, {**GITHUB, "X-GitHub-Event": "issue_comment"}, received_at=RECEIVED)


# --- Jira: jira:issue_updated with a changelog, jira:issue_deleted, comment_created


def jira(event: str, items: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body = payload("jira_issue_created.json")
    body["webhookEvent"] = event
    body["changelog"] = {"id": "10001", "items": items}
    body["issue"]["fields"].update(fields)
    return body


def test_jira_summary_change_is_text() -> None:
    body = jira(
        "jira:issue_updated",
        [{"field": "summary", "fieldtype": "jira", "fromString": "a", "toString": "New"}],
        summary="New",
        updated="2026-01-02T03:00:00.000+0000",
    )
    u = update_of("jira", body)
    assert (u.text, u.subject, u.status) == (True, "New", None)
    assert u.updated_at == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)


def test_jira_status_category_and_duplicate_resolution() -> None:
    done = {"name": "Done", "statusCategory": {"id": 3, "key": "done", "name": "Done"}}
    items = [
        {"field": "status", "fieldtype": "jira", "fromString": "To Do", "toString": "Done"},
        {"field": "resolution", "fieldtype": "jira", "fromString": None, "toString": "Duplicate"},
    ]
    u = update_of("jira", jira("jira:issue_updated", items, status=done))
    assert (u.status, u.duplicate, u.text) == ("closed", True, False)
    u = update_of("jira", jira("jira:issue_updated", items[:1], status=done))
    assert (u.status, u.duplicate) == ("solved", False)


def test_jira_labels_deleted_and_comments() -> None:
    items = [
        {
            "field": "labels",
            "fieldtype": "jira",
            "fromString": "a",
            "toString": "a triage-duplicate",
        }
    ]
    u = update_of("jira", jira("jira:issue_updated", items))
    assert (u.tags_added, u.tags_removed) == (("triage-duplicate",), ())
    assert update_of("jira", jira("jira:issue_deleted", [])).status == "deleted"
    body = jira("comment_created", [])
    body["comment"] = {"id": "1", "body": "seen", "created": "2026-01-02T03:00:00.000+0000"}
    assert update_of("jira", body).note == "seen"


# --- Zendesk: the trigger template's ticket_updated, and ticket event types


def test_zendesk_trigger_template_update() -> None:
    body = payload("zendesk_ticket_created.json")
    body["event"] = "ticket_updated"
    body["ticket"].update(
        status="Solved", tags="billing triage-duplicate", updated_at="2026-01-02T03:00:00Z"
    )
    u = update_of("zendesk", body)
    assert (u.status, u.tags, u.text) == ("solved", ("billing", "triage-duplicate"), True)


@pytest.mark.parametrize(
    ("kind", "event", "check"),
    [
        ("status_changed", {"current": "hold", "previous": "open"}, {"status": "pending"}),
        ("subject_changed", {"current": "New", "previous": "Old"}, {"subject": "New"}),
        (
            "tags_changed",
            {"tags_added": ["triage-duplicate"], "tags_removed": ["x"]},
            {"tags_added": ("triage-duplicate",), "tags_removed": ("x",)},
        ),
        ("comment_added", {"comment": {"body": "hi", "is_public": False}}, {"note": "hi"}),
        ("soft_deleted", {}, {"status": "deleted"}),
    ],
)
def test_zendesk_ticket_event_types(
    kind: str, event: dict[str, Any], check: dict[str, Any]
) -> None:
    body = payload("zendesk_ticket.created_event.json")
    body["type"] = f"zen:event-type:ticket.{kind}"
    body["event"] = event
    u = update_of("zendesk", body)
    for name, value in check.items():
        assert getattr(u, name) == value


# --- Freshdesk: an automation rule on updates with the documented update template


def test_freshdesk_update_template() -> None:
    body = payload("freshdesk_ticket_created.json")
    hook = body["freshdesk_webhook"]
    hook.update(
        triggered_event="{status:{from:Open,to:Resolved}}",
        ticket_status="Resolved",
        ticket_tags="billing,triage-similar",
        ticket_latest_private_comment="<p>checked</p>",
    )
    u = update_of("freshdesk", body)
    assert (u.status, u.tags, u.note) == ("solved", ("billing", "triage-similar"), "<p>checked</p>")
    assert u.body == "Test ticket description ☃."


# --- Zammad: every trigger delivery is also an update


def test_zammad_delivery_is_a_creation_and_an_update() -> None:
    body = payload("zammad_ticket_created.json")
    body["ticket"]["state"] = "merged"
    body["article"]["internal"] = True
    delivery = adapt("zammad", body, {}, received_at=RECEIVED)
    assert delivery.ticket is not None and delivery.update is not None
    u = delivery.update
    assert (u.ticket_id, u.status, u.duplicate) == ("10081", "closed", True)
    assert u.subject == "Webhook-Test" and u.body is None
    assert u.note is not None and u.note.startswith("This is a simple Webhook Test.")


# --- Help Scout: convo.status, convo.deleted, convo.merged, convo.tags, notes, replies


@pytest.mark.parametrize(
    ("event", "changes", "check"),
    [
        ("convo.status", {"status": "closed"}, {"status": "closed"}),
        ("convo.status", {"status": "pending"}, {"status": "pending"}),
        ("convo.deleted", {}, {"status": "deleted"}),
        ("convo.merged", {}, {"status": "closed", "duplicate": True}),
        (
            "convo.tags",
            {"tags": [{"id": 1, "tag": "triage-duplicate"}]},
            {"tags": ("triage-duplicate",)},
        ),
        ("convo.customer.reply.created", {}, {"text": True}),
    ],
)
def test_helpscout_update_events(
    event: str, changes: dict[str, Any], check: dict[str, Any]
) -> None:
    body = payload("helpscout_convo.created.json")
    body.update(changes)
    u = update_of("helpscout", body, {"X-HelpScout-Event": event})
    assert u.event == event
    for name, value in check.items():
        assert getattr(u, name) == value


def test_update_messages_round_trip() -> None:
    body = github("closed", state="closed", state_reason="duplicate")
    u = update_of("github", body, {**GITHUB, "X-GitHub-Event": "issues"})
    assert TicketUpdate.from_message(json.loads(json.dumps(u.to_message()))) == u
