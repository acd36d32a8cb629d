"""Write-back: what a decision writes into the ticket in its own helpdesk, and the shape every
vendor's writer has.

A decision on a ticket from a helpdesk whose credential is set gets one outbox action of kind
``helpdesk`` whose target is that helpdesk (the ticket's source). Its payload is the decision
as the read API returns it; the note is rendered when the action is sent, from the stored
subjects of the matches at that moment (a ticket purged since is named by its id only).

What is written, per route (``TRIAGE_ACTIONS_*``):

- ``duplicate``: the duplicate tag and an internal note naming the canonical ticket, with a
  link (Jira also links the issues);
- ``suggest``: the suggest tag and an internal note listing the shown matches;
- ``manual``: the manual tag if one is set, else nothing (no action is queued).

A writer is safe to run again after a worker dies mid-delivery: the note ends with the
action's marker (tickets/marks.py) and is not posted again when the ticket already has a note
carrying it; tags are added beside the ticket's own.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import requests
from jinja2.sandbox import SandboxedEnvironment

from config.settings import Settings
from tickets.marks import marked_action, note_marker, note_ref
from tickets.model import TicketKey

KIND = "helpdesk"
ROUTES_WITH_NOTE = ("duplicate", "suggest")


class Refused(Exception):
    """A vendor answered a call with a status other than 2xx; the delivery's outcome (retry,
    wait, dead) follows from that answer as for any receiver. A vendor whose API signals a
    rate limit otherwise (GitHub: a 403) passes ``status=429`` and the wait it documents."""

    def __init__(
        self,
        response: requests.Response,
        *,
        status: int | None = None,
        wait_s: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.status = response.status_code if status is None else status
        self.wait_s = wait_s


@dataclass(frozen=True)
class Reference:
    """Another ticket as a note names it: never its body."""

    ticket_id: str
    subject: str | None
    link: str | None
    score: float


@dataclass(frozen=True)
class WriteBack:
    """What one decision writes into its ticket."""

    action_id: str
    ticket_id: str
    route: str
    tags: tuple[str, ...]
    # Plain text, without the marker; None writes tags only.
    note: str | None
    canonical: Reference | None
    matches: tuple[Reference, ...]

    @property
    def marker(self) -> str:
        return note_marker(self.action_id)

    def note_text(self) -> str:
        """The note as Markdown (GitHub), ending with the marker, which Markdown hides."""
        return f"{self.note or ''}\n\n{self.marker}"

    def note_plain(self) -> str:
        """The note as plain text, ending with the visible reference line (a vendor that
        would show an HTML comment as text: Jira's wiki markup)."""
        return f"{self.note or ''}\n\n{self.ref}"

    @property
    def ref(self) -> str:
        return note_ref(self.action_id)

    def note_html(self) -> str:
        """The note as HTML: the text escaped, its line breaks kept, then the visible
        reference line and the marker (a sanitiser may drop the comment, never the line)."""
        text = "<br>\n".join(html.escape(self.note or "").split("\n"))
        return f"<p>{text}</p>\n<p><small>{self.ref}</small></p>\n{self.marker}"


def tag_for(route: str, settings: Settings) -> str | None:
    return {
        "duplicate": settings.actions_duplicate_tag,
        "suggest": settings.actions_suggest_tag,
        "manual": settings.actions_manual_tag,
    }.get(route)


def wants_action(decision: Mapping[str, Any], settings: Settings) -> bool:
    """Whether write-back has something to write for this decision."""
    if decision["source"] not in settings.writeback_vendors:
        return False
    return decision["route"] in ROUTES_WITH_NOTE or tag_for(decision["route"], settings) is not None


_TEMPLATES = SandboxedEnvironment(autoescape=False, keep_trailing_newline=False)


def render_note(template: str, **context: Any) -> str:
    """A note template (TRIAGE_ACTIONS_*_TEMPLATE) rendered over plain text, sandboxed."""
    return _TEMPLATES.from_string(template).render(**context).strip()


class HelpdeskWriter:
    """One vendor's write-back, through this process's HTTP client (passed in).

    A vendor module subclasses it with its ``source`` and the calls of its API; the default
    :meth:`write` posts the note unless the ticket already has it, then adds the tags.
    """

    source: ClassVar[str]

    def __init__(self, settings: Settings, http: requests.Session) -> None:
        self.settings, self.http = settings, http

    # --- what a vendor provides -----------------------------------------------------------

    def link(self, ticket_id: str) -> str | None:
        """The ticket's page for an agent, or None when it cannot be built."""
        return None

    def has_note(self, ticket_id: str, action_id: str) -> bool:
        """Whether the ticket already carries the note of ``action_id`` (its marker or its
        reference line: :func:`written_by`)."""
        raise NotImplementedError

    def post_note(self, write: WriteBack) -> None:
        raise NotImplementedError

    def add_tags(self, ticket_id: str, tags: Sequence[str]) -> None:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------

    def write(self, write: WriteBack) -> None:
        """The note (once: its marker is looked for first), then the tags; safe to repeat."""
        if write.note is not None and not self.has_note(write.ticket_id, write.action_id):
            self.post_note(write)
        if write.tags:
            self.add_tags(write.ticket_id, write.tags)

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """One API call; a non-2xx answer raises :class:`Refused`, a connection error or a
        timeout ``requests.RequestException``."""
        timeout = self.settings.actions_timeout_s
        kwargs.setdefault("timeout", (min(timeout, 5.0), timeout))
        kwargs.setdefault("allow_redirects", False)
        response = self.http.request(method, url, **kwargs)
        if not 200 <= response.status_code < 300:
            raise Refused(response)
        return response

    def prepare(
        self,
        action_id: str,
        decision: Mapping[str, Any],
        subjects: Mapping[TicketKey, str | None],
    ) -> WriteBack:
        """What the decision (the outbox payload) writes, its note rendered now."""
        route = decision["route"]
        tag = tag_for(route, self.settings)

        def reference(source: str, ticket_id: str, score: float) -> Reference:
            same = source == self.source
            return Reference(
                ticket_id=ticket_id if same else f"{source}:{ticket_id}",
                subject=subjects.get(TicketKey(source, ticket_id)),
                link=self.link(ticket_id) if same else None,
                score=score,
            )

        matches = tuple(
            reference(m["source"], m["ticket_id"], float(m["score"]))
            for m in decision.get("matches") or []
        )
        canonical = None
        if decision.get("canonical_ticket_id") is not None and route == "duplicate":
            canonical = reference(
                decision["canonical_source"],
                decision["canonical_ticket_id"],
                float(decision.get("score") or 0.0),
            )
        note = None
        if route in ROUTES_WITH_NOTE:
            template = (
                self.settings.actions_duplicate_template
                if route == "duplicate"
                else self.settings.actions_suggest_template
            )
            note = render_note(
                template,
                route=route,
                vendor=self.source,
                score=float(decision.get("score") or 0.0),
                canonical=canonical,
                matches=matches,
                tag=tag,
            )
        return WriteBack(
            action_id=action_id,
            ticket_id=decision["ticket_id"],
            route=route,
            tags=(tag,) if tag else (),
            note=note,
            canonical=canonical,
            matches=matches,
        )


def written_by(action_id: str, *texts: str | None) -> bool:
    """Whether any of ``texts`` (a note's body, its HTML, its plain text) is the note of
    ``action_id``."""
    return any(marked_action(text) == action_id for text in texts)


def match_keys(decision: Mapping[str, Any]) -> list[TicketKey]:
    """The tickets a decision's note may name: its matches and its canonical ticket."""
    keys = [TicketKey(m["source"], m["ticket_id"]) for m in decision.get("matches") or []]
    if decision.get("canonical_ticket_id") is not None:
        keys.append(TicketKey(decision["canonical_source"], decision["canonical_ticket_id"]))
    return keys
