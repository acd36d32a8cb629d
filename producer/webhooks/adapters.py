"""Vendor webhook payloads → the canonical ``Ticket`` (a new ticket) or ``TicketUpdate`` (a
stored ticket changed), see tickets/model.py.

``adapt(vendor, payload, headers, received_at=...)`` takes the parsed JSON of a delivery
whose signature was already verified, and returns a ``Delivery`` (``ticket`` for a new
ticket, ``update`` for a change; a Zammad delivery carries both), or raises:

- ``PayloadError`` (HTTP 422): a required field is missing or has the wrong type, or the
  canonical ticket rejects a value. ``.field`` is the dotted path in the vendor's payload
  (``issue.title``, ``_embedded.threads.0.body``).
- ``MissingHeader`` (HTTP 400), a PayloadError: a header the vendor always sends is
  missing; ``.field`` is its name (``X-GitHub-Event``, ``X-GitHub-Delivery``).
- ``IgnoredEvent`` (HTTP 200): a genuine delivery that is neither a new ticket nor a
  supported update.

Update events, per vendor, with each vendor's statuses mapped onto the product's ``open``,
``pending``, ``solved``, ``closed``, ``deleted`` (docs/helpdesks/ lists them): Zendesk's
trigger body ``event: ticket_updated`` and its ``zen:event-type:ticket.*_changed`` /
``comment_added`` / ``*deleted`` events; GitHub ``issues`` edited, closed (``state_reason``),
reopened, deleted, labeled, unlabeled and ``issue_comment`` created; Jira
``jira:issue_updated`` (read from ``changelog.items``), ``jira:issue_deleted`` and
``comment_created``; a Freshdesk ``triggered_event`` other than the creation; every Zammad
delivery (its payload does not say what fired it); Help Scout ``convo.status``,
``convo.deleted``, ``convo.merged``, ``convo.tags``, ``convo.note.created`` and
``convo.customer.reply.created``.

``source`` is the vendor name and vendor ids are kept as they are. Mapping per vendor:

=========  ==========================  ==============  ===================================
vendor     ticket_id                   subject         body
=========  ==========================  ==============  ===================================
zendesk    ticket.id                   ticket.subject  ticket.description (plain text)
github     repository.full_name#number issue.title     issue.body (Markdown, null → "")
jira       issue.key                   fields.summary  fields.description (wiki markup)
freshdesk  ticket_id                   ticket_subject  ticket_description (HTML → text)
zammad     ticket.number               ticket.title    article.body (HTML → text if html)
helpscout  id                          subject         first customer thread (HTML → text),
                                                       else ``preview``
=========  ==========================  ==============  ===================================

HTML is converted here, once, with tickets/html.py, and such tickets (and Zammad's
``text/plain`` articles) carry ``body_format="text"``: text preparation in the worker leaves
them as they are, so ``&lt;div&gt;`` a customer typed is ``<div>`` in the stored and embedded
text instead of a tag removed by a second pass. The converted text is what the read API and
the dashboard show, and the canonical ticket's checks (no text at all, the length cap) apply
to what a reader sees. The other vendors' bodies keep ``body_format="html"``: the worker
converts the HTML tags it finds there (Markdown may hold inline HTML), as it does for imports.

Decisions worth knowing:

- **Zendesk**: the supported path is a trigger/automation webhook with the JSON body of
  ``zendesk_ticket_created.template.json`` (``ticket.*``; ``tags`` a space-separated
  string; ``group`` → queue; minute-precision ``created_at``). If that body has an
  ``event`` key other than ``ticket_created`` the delivery is ignored. The
  event-subscription shape (``type: zen:event-type:ticket.created``, fields under
  ``detail``) is accepted too, but Zendesk's ``detail`` may carry neither subject nor
  description: that is a PayloadError naming ``detail.subject``. ``zen:event-type`` values
  not listed above are ignored.
- **Zammad**: ``ticket.number`` (the number agents see and search for, e.g. ``10081``)
  is the id, not the internal ``ticket.id``; one of the two had to be chosen so that the
  key never changes with the payload. A payload without ``number`` is a PayloadError.
- **GitHub**: a new ticket from ``X-GitHub-Event: issues`` with ``action: opened``; ``ping``
  and every event or action not listed above are ignored. No queue (the repository is part of the id). A
  delivery without ``X-GitHub-Delivery`` (GitHub always sends it) is a MissingHeader.
- **Jira**: a new ticket from ``webhookEvent: jira:issue_created``; queue = ``fields.project.key``.
  An ADF (object) description is a PayloadError: webhooks send the REST v2 string form.
- **Freshdesk**: ``triggered_event`` (``{ticket_action:created}``) is optional; any other
  value is ignored. queue = ``ticket_type`` when non-empty; no tags or creation time in
  the documented template.
- **Help Scout**: a new ticket from ``X-HelpScout-Event: convo.created``. The body is the earliest
  ``customer`` thread (any thread if none is from the customer) that has text, else
  ``preview``. queue = ``mailboxId`` as a string; tags = ``tags[].tag``.
- Timestamps go through ``datetime.fromisoformat`` (Python ≥3.11 reads ``Z``, ``+0530``
  and ``2013-12-12T05:35Z``); a naive one is taken as UTC; an empty string is "absent".
- Tags are stripped, empty ones dropped, duplicates removed (first wins).
- Values the canonical ticket refuses (a subject over 2000 characters, a body over
  ``MAX_BODY_CHARS``, a queue over 100) are PayloadErrors naming the vendor field: the
  ticket is refused rather than silently truncated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from pydantic import ValidationError

from producer.webhooks.signatures import VENDORS, lower_headers
from tickets.html import html_to_text
from tickets.model import BodyFormat, Status, Ticket, TicketUpdate

__all__ = ["Delivery", "IgnoredEvent", "MissingHeader", "PayloadError", "adapt"]


class PayloadError(Exception):
    """The delivery cannot become a ticket (HTTP 422). ``field`` is the offending path."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class MissingHeader(PayloadError):
    """A header the vendor sends with every delivery is missing (HTTP 400). ``field`` is the
    header's name as the vendor documents it."""


class IgnoredEvent(Exception):
    """A valid, signed delivery that is not a new ticket (HTTP 200 ``{"ignored": reason}``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Delivery:
    ticket: Ticket | None  # a new ticket; None when the delivery is an update
    delivery_id: str | None  # the vendor's id of this delivery, for dedupe; None if it has none
    update: TicketUpdate | None = None  # a stored ticket changed (worker/lifecycle.py)


class _Update(Exception):
    """Raised by a vendor's function when the delivery reports a change to a ticket."""

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(fields.get("event", "update"))


def _status(vocabulary: Mapping[str, Status], value: str | None) -> Status | None:
    """A vendor's status name in the product's vocabulary (case and spacing ignored);
    None for a name the vendor's documentation does not list (the status is left as is)."""
    if value is None:
        return None
    return vocabulary.get(" ".join(value.lower().replace("_", " ").split()))


# Where each vendor puts its delivery id (lower-cased header names).
DELIVERY_ID_HEADERS: dict[str, str | None] = {
    "zendesk": "x-zendesk-webhook-invocation-id",
    "github": "x-github-delivery",
    "jira": "x-atlassian-webhook-identifier",
    "zammad": "x-zammad-delivery",
    "helpscout": None,
    "freshdesk": None,
}

JSON = dict[str, Any]


# ---------------------------------------------------------------------------------------
# Typed access to untrusted JSON, every failure naming its path
# ---------------------------------------------------------------------------------------


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _join(prefix: str, key: str | int) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _as_object(value: object, path: str) -> JSON:
    if not isinstance(value, dict):
        raise PayloadError(path, f"expected a JSON object, got {_kind(value)}")
    return value


def _object(parent: JSON, key: str, path: str) -> JSON:
    value = parent.get(key)
    if value is None:
        raise PayloadError(path, "missing (required object)")
    return _as_object(value, path)


def _optional_object(parent: JSON, key: str, path: str) -> JSON:
    value = parent.get(key)
    return {} if value is None else _as_object(value, path)


def _int_text(value: int, path: str) -> str:
    try:
        return str(value)
    except ValueError:  # more digits than int→str allows
        raise PayloadError(path, "number is too large") from None


def _optional_ident(parent: JSON, key: str, path: str) -> str | None:
    """A vendor id: a string or an integer (never a boolean or a float)."""
    value = parent.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_text(value, path)
    if isinstance(value, str):
        return value.strip() or None
    raise PayloadError(path, f"expected a string or an integer id, got {_kind(value)}")


def _ident(parent: JSON, key: str, path: str) -> str:
    value = _optional_ident(parent, key, path)
    if value is None:
        raise PayloadError(path, "missing (required id)")
    return value


def _text(parent: JSON, key: str, path: str) -> str | None:
    value = parent.get(key)
    if value is None or isinstance(value, str):
        return value
    raise PayloadError(path, f"expected a string or null, got {_kind(value)}")


def _required_text(parent: JSON, key: str, path: str) -> str:
    value = _text(parent, key, path)
    if value is None or not value.strip():
        raise PayloadError(path, "missing or empty (required string)")
    return value.strip()


def _time(parent: JSON, key: str, path: str) -> datetime | None:
    value = _text(parent, key, path)
    if value is None or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise PayloadError(path, "not an ISO 8601 timestamp") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _string_list(parent: JSON, key: str, path: str) -> list[str]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(path, f"expected an array of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise PayloadError(_join(path, i), f"expected a string, got {_kind(item)}")
    return value


def _named_list(parent: JSON, key: str, path: str, name: str) -> list[str]:
    """``[{name: "..."}, ...]`` → the names (GitHub labels, Help Scout tags)."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(path, f"expected an array of objects, got {_kind(value)}")
    names = []
    for i, item in enumerate(value):
        names.append(_required_text(_as_object(item, _join(path, i)), name, f"{path}.{i}.{name}"))
    return names


def _clean_tags(tags: list[str], path: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for i, raw in enumerate(tags):
        tag = raw.replace("\x00", "").strip()
        try:
            tag.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError(
                _join(path, i), "contains invalid Unicode (a lone surrogate)"
            ) from None
        if tag:
            seen.setdefault(tag, None)
    return tuple(seen)


# ---------------------------------------------------------------------------------------
# Per-vendor extraction
# ---------------------------------------------------------------------------------------


@dataclass
class _Draft:
    ticket_id: str
    subject: str | None
    body: str
    created_at: datetime | None = None
    queue: str | None = None
    tags: tuple[str, ...] = ()
    body_format: BodyFormat = "html"
    # Ticket field → the vendor path it came from, for error messages.
    paths: dict[str, str] = field(default_factory=dict)


_ZENDESK_EVENT_PREFIX = "zen:event-type:"


def _zendesk(payload: JSON, headers: Mapping[str, str]) -> _Draft:
    kind = payload.get("type")
    if "detail" in payload or (isinstance(kind, str) and kind.startswith(_ZENDESK_EVENT_PREFIX)):
        return _zendesk_event(payload)
    event = _text(payload, "event", "event")
    if event and event.strip() == "ticket_updated":
        _zendesk_updated(payload)
    if event and event.strip() != "ticket_created":
        raise IgnoredEvent(f"zendesk event {event.strip()[:64]!r} is not ticket_created")
    ticket = _object(payload, "ticket", "ticket")
    return _Draft(
        ticket_id=_ident(ticket, "id", "ticket.id"),
        subject=_text(ticket, "subject", "ticket.subject"),
        body=_text(ticket, "description", "ticket.description") or "",
        created_at=_time(ticket, "created_at", "ticket.created_at"),
        queue=_text(ticket, "group", "ticket.group"),
        tags=_clean_tags(_zendesk_tags(ticket, "ticket.tags"), "ticket.tags"),
        paths={
            "ticket_id": "ticket.id",
            "subject": "ticket.subject",
            "body": "ticket.description",
            "created_at": "ticket.created_at",
            "queue": "ticket.group",
            "tags": "ticket.tags",
        },
    )


def _zendesk_tags(parent: JSON, path: str) -> list[str]:
    value = parent.get("tags")
    if isinstance(value, str):  # {{ticket.tags}} renders as "tag1 tag2 tag3"
        return value.split()
    return _string_list(parent, "tags", path)


def _zendesk_event(payload: JSON) -> _Draft:
    kind = payload.get("type")
    if not isinstance(kind, str):
        raise PayloadError("type", f"expected the event type string, got {_kind(kind)}")
    if kind in _ZENDESK_UPDATES:
        _zendesk_event_update(payload, kind)
    if kind != f"{_ZENDESK_EVENT_PREFIX}ticket.created":
        raise IgnoredEvent(f"zendesk event {kind[:80]!r} is not ticket.created")
    detail = _object(payload, "detail", "detail")
    ticket_id = _ident(detail, "id", "detail.id")
    subject = _text(detail, "subject", "detail.subject")
    body = _text(detail, "description", "detail.description") or ""
    if not (subject or "").strip() and not body.strip():
        raise PayloadError(
            "detail.subject",
            "the ticket.created event carries neither detail.subject nor detail.description; "
            "send ticket webhooks from a trigger with the documented JSON template instead",
        )
    return _Draft(
        ticket_id=ticket_id,
        subject=subject,
        body=body,
        created_at=_time(detail, "created_at", "detail.created_at"),
        queue=_optional_ident(detail, "group_id", "detail.group_id"),
        tags=_clean_tags(_zendesk_tags(detail, "detail.tags"), "detail.tags"),
        paths={
            "ticket_id": "detail.id",
            "subject": "detail.subject",
            "body": "detail.description",
            "created_at": "detail.created_at",
            "queue": "detail.group_id",
            "tags": "detail.tags",
        },
    )


# Zendesk's ticket statuses (and the trigger placeholder's capitalised forms).
ZENDESK_STATUSES: dict[str, Status] = {
    "new": "open",
    "open": "open",
    "pending": "pending",
    "hold": "pending",
    "on-hold": "pending",
    "solved": "solved",
    "closed": "closed",
    "deleted": "deleted",
}
_ZENDESK_UPDATES = {
    f"{_ZENDESK_EVENT_PREFIX}ticket.{name}"
    for name in (
        "status_changed",
        "subject_changed",
        "description_changed",
        "tags_changed",
        "comment_added",
        "soft_deleted",
        "permanently_deleted",
        "undeleted",
    )
}


def _zendesk_updated(payload: JSON) -> NoReturn:
    """The trigger template's ``"event": "ticket_updated"`` body: the ticket as it is now."""
    ticket = _object(payload, "ticket", "ticket")
    subject = _text(ticket, "subject", "ticket.subject")
    body = _text(ticket, "description", "ticket.description")
    raise _Update(
        ticket_id=_ident(ticket, "id", "ticket.id"),
        event="ticket_updated",
        text=subject is not None or body is not None,
        subject=subject,
        body=body,
        status=_status(ZENDESK_STATUSES, _text(ticket, "status", "ticket.status")),
        tags=_clean_tags(_zendesk_tags(ticket, "ticket.tags"), "ticket.tags"),
        note=_text(ticket, "latest_comment", "ticket.latest_comment"),
        updated_at=_time(ticket, "updated_at", "ticket.updated_at"),
    )


def _zendesk_event_update(payload: JSON, kind: str) -> NoReturn:
    """Zendesk's ticket event types (``detail`` the ticket, ``event`` the change)."""
    name = kind.removeprefix(f"{_ZENDESK_EVENT_PREFIX}ticket.")
    detail = _object(payload, "detail", "detail")
    change = _optional_object(payload, "event", "event")
    fields: dict[str, Any] = {
        "ticket_id": _ident(detail, "id", "detail.id"),
        "event": f"ticket.{name}",
        "updated_at": _time(detail, "updated_at", "detail.updated_at"),
    }
    if name == "status_changed":
        fields["status"] = _status(ZENDESK_STATUSES, _text(change, "current", "event.current"))
    elif name in ("subject_changed", "description_changed"):
        fields["text"] = True
        key = "subject" if name == "subject_changed" else "body"
        other, other_key = ("body", "description") if key == "subject" else ("subject", "subject")
        fields[key] = _text(change, "current", "event.current")
        fields[other] = _text(detail, other_key, f"detail.{other_key}")
    elif name == "tags_changed":
        fields["tags_added"] = _clean_tags(
            _string_list(change, "tags_added", "event.tags_added"), "event.tags_added"
        )
        fields["tags_removed"] = _clean_tags(
            _string_list(change, "tags_removed", "event.tags_removed"), "event.tags_removed"
        )
    elif name == "comment_added":
        comment = _optional_object(change, "comment", "event.comment")
        fields["note"] = _text(comment, "body", "event.comment.body") or ""
    elif name in ("soft_deleted", "permanently_deleted"):
        fields["status"] = "deleted"
    elif name == "undeleted":
        fields["status"] = _status(ZENDESK_STATUSES, _text(detail, "status", "detail.status"))
    raise _Update(**fields)


def _event_header(headers: Mapping[str, str], name: str, display: str) -> str:
    value = headers.get(name, "")
    if not value:
        raise MissingHeader(display, "missing header: cannot tell which event this is")
    return value


def _github(payload: JSON, headers: Mapping[str, str]) -> _Draft:
    # GitHub sends X-GitHub-Delivery with every delivery (and the same one on a redelivery):
    # it is the dedupe key, and without it a redelivered issue would be a new acceptance.
    if not headers.get("x-github-delivery"):
        raise MissingHeader(
            "X-GitHub-Delivery",
            "missing header: GitHub sends it with every delivery; it is the key that makes "
            "a redelivery a duplicate",
        )
    event = _event_header(headers, "x-github-event", "X-GitHub-Event")
    if event == "ping":
        raise IgnoredEvent("github ping")
    if event == "issue_comment":
        _github_comment(payload)
    if event != "issues":
        raise IgnoredEvent(f"github event {event[:64]!r} is not issues")
    action = _required_text(payload, "action", "action")
    if action in _GITHUB_UPDATES:
        _github_update(payload, action)
    if action != "opened":
        raise IgnoredEvent(f"github issues action {action[:64]!r} is not opened")
    issue, ticket_id = _github_key(payload)
    return _Draft(
        ticket_id=ticket_id,
        subject=_text(issue, "title", "issue.title"),
        body=_text(issue, "body", "issue.body") or "",
        created_at=_time(issue, "created_at", "issue.created_at"),
        tags=_clean_tags(_named_list(issue, "labels", "issue.labels", "name"), "issue.labels"),
        paths={
            "ticket_id": "issue.number",
            "subject": "issue.title",
            "body": "issue.body",
            "created_at": "issue.created_at",
            "tags": "issue.labels",
        },
    )


_GITHUB_UPDATES = ("edited", "closed", "reopened", "deleted", "labeled", "unlabeled")


def _github_key(payload: JSON) -> tuple[JSON, str]:
    issue = _object(payload, "issue", "issue")
    repository = _object(payload, "repository", "repository")
    full_name = _required_text(repository, "full_name", "repository.full_name")
    number = issue.get("number")
    if not isinstance(number, int) or isinstance(number, bool):
        raise PayloadError("issue.number", f"expected an integer, got {_kind(number)}")
    return issue, f"{full_name}#{_int_text(number, 'issue.number')}"


def _github_update(payload: JSON, action: str) -> NoReturn:
    """``issues`` actions on an open issue: the issue object is the issue after the change."""
    issue, ticket_id = _github_key(payload)
    fields: dict[str, Any] = {
        "ticket_id": ticket_id,
        "event": f"issues.{action}",
        "updated_at": _time(issue, "updated_at", "issue.updated_at"),
    }
    if action == "edited":
        changes = _optional_object(payload, "changes", "changes")
        if "title" in changes or "body" in changes or not changes:
            fields.update(
                text=True,
                subject=_text(issue, "title", "issue.title"),
                body=_text(issue, "body", "issue.body") or "",
            )
    elif action == "closed":
        reason = _text(issue, "state_reason", "issue.state_reason")
        # completed: solved; not_planned and duplicate: closed without a fix.
        fields["status"] = "solved" if reason in (None, "completed") else "closed"
        fields["duplicate"] = reason == "duplicate"
    elif action == "reopened":
        fields["status"] = "open"
    elif action == "deleted":
        fields["status"] = "deleted"
    else:  # labeled / unlabeled: the one label in ``label``
        label = _object(payload, "label", "label")
        name = _clean_tags([_required_text(label, "name", "label.name")], "label.name")
        fields["tags_added" if action == "labeled" else "tags_removed"] = name
    raise _Update(**fields)


def _github_comment(payload: JSON) -> NoReturn:
    action = _required_text(payload, "action", "action")
    if action != "created":
        raise IgnoredEvent(f"github issue_comment action {action[:64]!r} is not created")
    _, ticket_id = _github_key(payload)
    comment = _object(payload, "comment", "comment")
    raise _Update(
        ticket_id=ticket_id,
        event="issue_comment.created",
        note=_text(comment, "body", "comment.body") or "",
        updated_at=_time(comment, "created_at", "comment.created_at"),
    )


# Jira's status categories (``fields.status.statusCategory.key``): every workflow's statuses
# fall in one of three; "done" with the resolution Duplicate is a duplicate closure.
JIRA_CATEGORIES: dict[str, Status] = {"new": "open", "indeterminate": "pending", "done": "solved"}
_JIRA_UPDATES = ("jira:issue_updated", "jira:issue_deleted", "comment_created")


def _jira_update(payload: JSON, event: str) -> NoReturn:
    issue = _object(payload, "issue", "issue")
    fields_ = _optional_object(issue, "fields", "issue.fields")
    fields: dict[str, Any] = {
        "ticket_id": _ident(issue, "key", "issue.key"),
        "event": event,
        "updated_at": _time(fields_, "updated", "issue.fields.updated"),
    }
    if event == "jira:issue_deleted":
        fields["status"] = "deleted"
        raise _Update(**fields)
    if event == "comment_created":
        comment = _optional_object(payload, "comment", "comment")
        fields["note"] = _text(comment, "body", "comment.body") or ""
        fields["updated_at"] = _time(comment, "created", "comment.created")
        raise _Update(**fields)
    changelog = _optional_object(payload, "changelog", "changelog")
    items = changelog.get("items") or []
    if not isinstance(items, list):
        raise PayloadError("changelog.items", f"expected an array, got {_kind(items)}")
    changed: set[str] = set()
    for i, raw in enumerate(items):
        item = _as_object(raw, f"changelog.items.{i}")
        name = (_text(item, "field", f"changelog.items.{i}.field") or "").lower()
        changed.add(name)
        if name == "labels":
            before = set(
                (_text(item, "fromString", f"changelog.items.{i}.fromString") or "").split()
            )
            after = set((_text(item, "toString", f"changelog.items.{i}.toString") or "").split())
            fields["tags_added"] = tuple(sorted(after - before))
            fields["tags_removed"] = tuple(sorted(before - after))
        if name == "resolution":
            resolution = _text(item, "toString", f"changelog.items.{i}.toString") or ""
            fields["duplicate"] = resolution.strip().lower() == "duplicate"
    if changed & {"summary", "description"}:
        fields.update(
            text=True,
            subject=_text(fields_, "summary", "issue.fields.summary"),
            body=_text(fields_, "description", "issue.fields.description") or "",
        )
    if changed & {"status", "resolution"}:
        status = _optional_object(fields_, "status", "issue.fields.status")
        category = _optional_object(status, "statusCategory", "issue.fields.status.statusCategory")
        fields["status"] = _status(
            JIRA_CATEGORIES, _text(category, "key", "issue.fields.status.statusCategory.key")
        )
        if fields.get("duplicate"):
            fields["status"] = "closed"
    raise _Update(**fields)


def _jira(payload: JSON, headers: Mapping[str, str]) -> _Draft:
    event = _required_text(payload, "webhookEvent", "webhookEvent")
    if event in _JIRA_UPDATES:
        _jira_update(payload, event)
    if event != "jira:issue_created":
        raise IgnoredEvent(f"jira event {event[:64]!r} is not jira:issue_created")
    issue = _object(payload, "issue", "issue")
    fields = _object(issue, "fields", "issue.fields")
    project = _optional_object(fields, "project", "issue.fields.project")
    return _Draft(
        ticket_id=_ident(issue, "key", "issue.key"),
        subject=_text(fields, "summary", "issue.fields.summary"),
        body=_text(fields, "description", "issue.fields.description") or "",
        created_at=_time(fields, "created", "issue.fields.created"),
        queue=_text(project, "key", "issue.fields.project.key"),
        tags=_clean_tags(
            _string_list(fields, "labels", "issue.fields.labels"), "issue.fields.labels"
        ),
        paths={
            "ticket_id": "issue.key",
            "subject": "issue.fields.summary",
            "body": "issue.fields.description",
            "created_at": "issue.fields.created",
            "queue": "issue.fields.project.key",
            "tags": "issue.fields.labels",
        },
    )


_FRESHDESK_CREATED = "ticket_action:created"


def _freshdesk(payload: JSON, headers: Mapping[str, str]) -> _Draft:
    hook = _object(payload, "freshdesk_webhook", "freshdesk_webhook")
    triggered = _text(hook, "triggered_event", "freshdesk_webhook.triggered_event")
    if triggered is not None:
        # "{ticket_action:created}"; an update rule renders e.g. "{status:{from:Open,to:Closed}}".
        normalized = re.sub(r"[{}\s]", "", triggered).lower()
        if normalized and normalized != _FRESHDESK_CREATED:
            _freshdesk_update(hook, triggered.strip())
    description = _text(hook, "ticket_description", "freshdesk_webhook.ticket_description")
    return _Draft(
        ticket_id=_ident(hook, "ticket_id", "freshdesk_webhook.ticket_id"),
        subject=_text(hook, "ticket_subject", "freshdesk_webhook.ticket_subject"),
        body=html_to_text(description or ""),
        body_format="text",
        queue=_text(hook, "ticket_type", "freshdesk_webhook.ticket_type"),
        paths={
            "ticket_id": "freshdesk_webhook.ticket_id",
            "subject": "freshdesk_webhook.ticket_subject",
            "body": "freshdesk_webhook.ticket_description",
            "queue": "freshdesk_webhook.ticket_type",
        },
    )


# Freshdesk's default statuses (``{{ticket.status}}`` renders the name).
FRESHDESK_STATUSES: dict[str, Status] = {
    "open": "open",
    "pending": "pending",
    "waiting on customer": "pending",
    "waiting on third party": "pending",
    "resolved": "solved",
    "closed": "closed",
}


def _freshdesk_update(hook: JSON, triggered: str) -> NoReturn:
    """An automation rule on ticket updates, with the documented update template: the
    ticket's text, status, tags and latest private note as they are after the change."""
    subject = _text(hook, "ticket_subject", "freshdesk_webhook.ticket_subject")
    description = _text(hook, "ticket_description", "freshdesk_webhook.ticket_description")
    tags = _text(hook, "ticket_tags", "freshdesk_webhook.ticket_tags")
    raise _Update(
        ticket_id=_ident(hook, "ticket_id", "freshdesk_webhook.ticket_id"),
        event=triggered[:200],
        text=subject is not None or description is not None,
        subject=subject,
        body=None if description is None else html_to_text(description),
        body_format="text",
        status=_status(
            FRESHDESK_STATUSES, _text(hook, "ticket_status", "freshdesk_webhook.ticket_status")
        ),
        tags=None
        if tags is None
        else _clean_tags(tags.split(","), "freshdesk_webhook.ticket_tags"),
        note=_text(
            hook,
            "ticket_latest_private_comment",
            "freshdesk_webhook.ticket_latest_private_comment",
        ),
    )


# Zammad's default ticket states (``ticket.state``); merged is a duplicate's closure.
ZAMMAD_STATES: dict[str, Status] = {
    "new": "open",
    "open": "open",
    "pending reminder": "pending",
    "pending close": "pending",
    "closed": "closed",
    "merged": "closed",
    "removed": "deleted",
}


def _zammad_update(payload: JSON) -> NoReturn:
    """A Zammad trigger's payload says nothing of what fired it: every delivery is read as
    the ticket as it is now (its title, state, tags and the article that fired it)."""
    ticket = _object(payload, "ticket", "ticket")
    article = _optional_object(payload, "article", "article")
    state = ticket.get("state")
    name = _text(state, "name", "ticket.state.name") if isinstance(state, dict) else None
    if not isinstance(state, dict):
        name = _text(ticket, "state", "ticket.state")
    internal = article.get("internal") is True
    tags = ticket.get("tags")
    fields: dict[str, Any] = {
        "ticket_id": _ident(ticket, "number", "ticket.number"),
        "event": "trigger",
        "text": True,
        "subject": _text(ticket, "title", "ticket.title"),
        "status": _status(ZAMMAD_STATES, name),
        "duplicate": (name or "").strip().lower() == "merged",
        "tags": None
        if tags is None
        else _clean_tags(_string_list(ticket, "tags", "ticket.tags"), "ticket.tags"),
        "note": _text(article, "body", "article.body") if internal else None,
        "updated_at": _time(ticket, "updated_at", "ticket.updated_at"),
    }
    raise _Update(**fields)


def _zammad(payload: JSON, headers: Mapping[str, str]) -> _Draft:
    ticket = _object(payload, "ticket", "ticket")
    article = _optional_object(payload, "article", "article")  # {} when fired without one
    body = _text(article, "body", "article.body") or ""
    content_type = _text(article, "content_type", "article.content_type") or ""
    # Zammad says what an article is: HTML is converted here, text/plain is text already;
    # an article that does not say is left to the worker, which converts the tags it finds.
    kind = content_type.strip().lower()
    body_format: BodyFormat = "html"
    if kind.startswith("text/html"):
        body, body_format = html_to_text(body), "text"
    elif kind.startswith("text/plain"):
        body_format = "text"
    group = ticket.get("group")
    if isinstance(group, dict):
        queue = _text(group, "name", "ticket.group.name")
    else:  # a custom payload may send the group's name as a string
        queue = _text(ticket, "group", "ticket.group")
    return _Draft(
        ticket_id=_ident(ticket, "number", "ticket.number"),
        subject=_text(ticket, "title", "ticket.title"),
        body=body,
        body_format=body_format,
        created_at=_time(ticket, "created_at", "ticket.created_at"),
        queue=queue,
        # Not in the default payload; a custom payload may add them.
        tags=_clean_tags(_string_list(ticket, "tags", "ticket.tags"), "ticket.tags"),
        paths={
            "ticket_id": "ticket.number",
            "subject": "ticket.title",
            "body": "article.body",
            "created_at": "ticket.created_at",
            "queue": "ticket.group.name" if isinstance(group, dict) else "ticket.group",
            "tags": "ticket.tags",
        },
    )


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _helpscout(payload: JSON, headers: Mapping[str, str]) -> _Draft:
    event = _event_header(headers, "x-helpscout-event", "X-HelpScout-Event")
    if event in _HELPSCOUT_UPDATES:
        _helpscout_update(payload, event)
    if event != "convo.created":
        raise IgnoredEvent(f"helpscout event {event[:64]!r} is not convo.created")
    body, body_path = _helpscout_body(payload)
    return _Draft(
        ticket_id=_ident(payload, "id", "id"),
        subject=_text(payload, "subject", "subject"),
        body=body,
        body_format="text",  # a thread converted here, or the plain-text preview
        created_at=_time(payload, "createdAt", "createdAt"),
        queue=_optional_ident(payload, "mailboxId", "mailboxId"),
        tags=_clean_tags(_named_list(payload, "tags", "tags", "tag"), "tags"),
        paths={
            "ticket_id": "id",
            "subject": "subject",
            "body": body_path,
            "created_at": "createdAt",
            "queue": "mailboxId",
            "tags": "tags",
        },
    )


# Help Scout's conversation statuses (``status``); spam is taken as closed.
HELPSCOUT_STATUSES: dict[str, Status] = {
    "active": "open",
    "pending": "pending",
    "closed": "closed",
    "spam": "closed",
}
_HELPSCOUT_UPDATES = (
    "convo.status",
    "convo.deleted",
    "convo.merged",
    "convo.tags",
    "convo.note.created",
    "convo.customer.reply.created",
)


def _helpscout_update(payload: JSON, event: str) -> NoReturn:
    """The conversation as it is after the event (Help Scout sends the whole object)."""
    fields: dict[str, Any] = {
        "ticket_id": _ident(payload, "id", "id"),
        "event": event,
        "updated_at": _time(payload, "userUpdatedAt", "userUpdatedAt"),
    }
    if event == "convo.status":
        fields["status"] = _status(HELPSCOUT_STATUSES, _text(payload, "status", "status"))
    elif event == "convo.deleted":
        fields["status"] = "deleted"
    elif event == "convo.merged":
        # The payload is the conversation merged away; Help Scout closes it.
        fields["status"] = "closed"
        fields["duplicate"] = True
    elif event == "convo.tags":
        fields["tags"] = _clean_tags(_named_list(payload, "tags", "tags", "tag"), "tags")
    elif event == "convo.note.created":
        embedded = _optional_object(payload, "_embedded", "_embedded")
        threads = embedded.get("threads") or []
        notes = [t for t in threads if isinstance(t, dict) and t.get("type") == "note"]
        fields["note"] = (
            (_text(notes[0], "body", "_embedded.threads.0.body") or "") if notes else ""
        )
    else:  # a customer's reply changes the conversation's text
        body, _ = _helpscout_body(payload)
        fields.update(text=True, subject=_text(payload, "subject", "subject"), body=body)
    raise _Update(**fields)


def _helpscout_body(payload: JSON) -> tuple[str, str]:
    embedded = _optional_object(payload, "_embedded", "_embedded")
    threads = embedded.get("threads")
    if threads is not None and not isinstance(threads, list):
        raise PayloadError("_embedded.threads", f"expected an array, got {_kind(threads)}")
    # (is not the customer's, created, position, text, path): the customer's earliest first.
    candidates: list[tuple[bool, datetime, int, str, str]] = []
    for i, raw in enumerate(threads or []):
        path = f"_embedded.threads.{i}"
        thread = _as_object(raw, path)
        text = html_to_text(_text(thread, "body", f"{path}.body") or "")
        if not text:
            continue
        created = _time(thread, "createdAt", f"{path}.createdAt") or _EPOCH
        is_customer = _text(thread, "type", f"{path}.type") == "customer"
        candidates.append((not is_customer, created, i, text, f"{path}.body"))
    if candidates:
        _, _, _, text, path = min(candidates, key=lambda c: (c[0], c[1], c[2]))
        return text, path
    return _text(payload, "preview", "preview") or "", "preview"


_ADAPTERS: dict[str, Callable[[JSON, Mapping[str, str]], _Draft]] = {
    "zendesk": _zendesk,
    "github": _github,
    "jira": _jira,
    "freshdesk": _freshdesk,
    "zammad": _zammad,
    "helpscout": _helpscout,
}


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------


def _build(vendor: str, draft: _Draft, received_at: datetime) -> Ticket:
    if not (draft.subject or "").strip() and not draft.body.strip():
        subject_path = draft.paths.get("subject", "subject")
        body_path = draft.paths.get("body", "body")
        raise PayloadError(
            subject_path, f"ticket has no text: {subject_path} and {body_path} are both empty"
        )
    try:
        return Ticket(
            source=vendor,
            ticket_id=draft.ticket_id,
            subject=draft.subject,
            body=draft.body,
            body_format=draft.body_format,
            created_at=draft.created_at,
            queue=draft.queue,
            tags=draft.tags,
            received_at=received_at,
        )
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]] or ["subject"]
            loc[0] = draft.paths.get(loc[0], loc[0])
            problems.append((".".join(loc), err["msg"].removeprefix("Value error, ")))
        first_path, first_problem = problems[0]
        rest = "".join(f"; {path}: {msg}" for path, msg in problems[1:])
        raise PayloadError(first_path, first_problem + rest) from None


def adapt(
    vendor: str, payload: Any, headers: Mapping[str, str], *, received_at: datetime
) -> Delivery:
    """The canonical ticket in a verified delivery; PayloadError / IgnoredEvent otherwise.

    ``payload`` is the parsed JSON body; ``headers`` any mapping (case is ignored).
    Raises ValueError for a vendor not in VENDORS: that is a routing bug, not a client error.
    """
    if vendor not in VENDORS:
        raise ValueError(f"unknown webhook vendor {vendor!r}; expected one of {', '.join(VENDORS)}")
    if not isinstance(payload, dict):
        raise PayloadError("body", f"expected a JSON object, got {_kind(payload)}")
    lowered = lower_headers(headers)
    header = DELIVERY_ID_HEADERS[vendor]
    delivery_id = (lowered.get(header) or None) if header else None
    try:
        draft = _ADAPTERS[vendor](payload, lowered)
    except _Update as change:
        return Delivery(None, delivery_id, _build_update(vendor, change.fields, received_at))
    ticket = _build(vendor, draft, received_at)
    update = None
    if vendor == "zammad":
        # Also an update: for a ticket stored already, the creation is a duplicate and the
        # update carries the change; for a new one, the update changes nothing.
        try:
            _zammad_update(payload)
        except _Update as change:
            update = _build_update(vendor, change.fields, received_at)
    return Delivery(ticket=ticket, delivery_id=delivery_id, update=update)


def _build_update(vendor: str, fields: dict[str, Any], received_at: datetime) -> TicketUpdate:
    fields = {k: v for k, v in fields.items() if v is not None}
    if fields.get("body_format") is None and vendor == "helpscout":
        fields["body_format"] = "text"
    try:
        return TicketUpdate(source=vendor, received_at=received_at, **fields)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PayloadError(
            ".".join(str(p) for p in err["loc"]) or "body",
            err["msg"].removeprefix("Value error, "),
        ) from None
