"""Write-back to Zammad: tags and an internal note, through its REST API.

Zammad's webhooks name a ticket by its number (what agents see, and what the adapter keys it
by); its API addresses tickets by id. ``GET /api/v1/tickets/search?query=number:N&expand=true``
resolves one to the other (cached per process: a ticket's number never changes).

- the check before a re-post: ``GET /api/v1/ticket_articles/by_ticket/{id}``, looking for the
  note's reference line in each article's body;
- the note: ``POST /api/v1/ticket_articles`` with ``type: note``, ``internal: true``,
  ``content_type: text/html``;
- the tags: ``POST /api/v1/tags/add`` ``{"object": "Ticket", "o_id": id, "item": tag}``, one
  call per tag (adding a tag the ticket has changes nothing).

Auth: ``Authorization: Token token=…`` (an access token).

References: https://docs.zammad.org/en/latest/api/ticket/index.html,
https://docs.zammad.org/en/latest/api/ticket/articles.html,
https://docs.zammad.org/en/latest/api/ticket/tags.html,
https://docs.zammad.org/en/latest/api/intro.html
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import requests

from actions.helpdesks.base import HelpdeskWriter, Refused, WriteBack, written_by
from config.settings import Settings


class ZammadWriter(HelpdeskWriter):
    source = "zammad"

    def __init__(self, settings: Settings, http: requests.Session) -> None:
        super().__init__(settings, http)
        self._ids: dict[str, int] = {}
        self._ids_lock = threading.Lock()

    def _api(self, path: str) -> str:
        return f"{self.settings.zammad_api_url}/api/v1/{path}"

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        token = self.settings.zammad_api_token
        assert token is not None  # a writer exists only when the token is set
        kwargs.setdefault("headers", {"authorization": f"Token token={token.get_secret_value()}"})
        return super().call(method, url, **kwargs)

    def ticket_id(self, number: str) -> int:
        """The id of the ticket numbered ``number``; a ValueError when none is."""
        with self._ids_lock:
            known = self._ids.get(number)
        if known is not None:
            return known
        found = self.call(
            "GET",
            self._api("tickets/search"),
            params={"query": f"number:{number}", "expand": "true", "limit": 10},
        ).json()
        # With expand=true an array of tickets; without, ids and assets.
        tickets = (
            found
            if isinstance(found, list)
            else list(((found.get("assets") or {}).get("Ticket") or {}).values())
        )
        for ticket in tickets:
            if str(ticket.get("number")) == number:
                with self._ids_lock:
                    self._ids[number] = int(ticket["id"])
                return int(ticket["id"])
        raise ValueError(f"Zammad has no ticket number {number!r}")

    def link(self, ticket_id: str) -> str | None:
        try:
            return f"{self.settings.zammad_api_url}/#ticket/zoom/{self.ticket_id(ticket_id)}"
        except (Refused, requests.RequestException, ValueError):
            return None  # a note without a link is better than no note

    def has_note(self, ticket_id: str, action_id: str) -> bool:
        articles = self.call(
            "GET", self._api(f"ticket_articles/by_ticket/{self.ticket_id(ticket_id)}")
        ).json()
        return any(written_by(action_id, a.get("body")) for a in articles)

    def post_note(self, write: WriteBack) -> None:
        self.call(
            "POST",
            self._api("ticket_articles"),
            json={
                "ticket_id": self.ticket_id(write.ticket_id),
                "subject": "ticket-triage",
                "body": write.note_html(),
                "content_type": "text/html",
                "type": "note",
                "internal": True,
            },
        )

    def add_tags(self, ticket_id: str, tags: Sequence[str]) -> None:
        o_id = self.ticket_id(ticket_id)
        for tag in tags:
            self.call(
                "POST", self._api("tags/add"), json={"object": "Ticket", "o_id": o_id, "item": tag}
            )
