"""Write-back to Freshdesk: a private note and tags, through the API v2.

- the check before a re-post: ``GET /api/v2/tickets/{id}/conversations`` (``per_page=100``,
  ``page``; a ``link`` header names the next page), looking for the note's reference line in
  ``body`` / ``body_text``;
- the note: ``POST /api/v2/tickets/{id}/notes`` ``{"body": HTML, "private": true}`` (201);
- the tags: Freshdesk's ticket update *replaces* the tag list, so ``GET /api/v2/tickets/{id}``
  reads it and ``PUT /api/v2/tickets/{id}`` ``{"tags": [...]}`` writes it back with the new
  tag added (nothing is written when it is there). A tag an agent adds between the two calls
  is lost; Freshdesk offers no call that only adds.

Auth: the agent's API key as the basic-auth user, ``X`` as the password. A rate limit is a
429 with ``Retry-After`` in seconds (``X-Ratelimit-Remaining`` counts down to it).

References: https://developers.freshdesk.com/api/#create_note,
https://developers.freshdesk.com/api/#list_all_ticket_notes,
https://developers.freshdesk.com/api/#update_ticket, https://developers.freshdesk.com/api/#ratelimit
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import requests

from actions.helpdesks.base import HelpdeskWriter, WriteBack, written_by


class FreshdeskWriter(HelpdeskWriter):
    source = "freshdesk"

    def _ticket(self, ticket_id: str) -> str:
        if not ticket_id.isdigit():
            raise ValueError(f"not a Freshdesk ticket id: {ticket_id!r}")
        return f"{self.settings.freshdesk_api_url}/api/v2/tickets/{ticket_id}"

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        key = self.settings.freshdesk_api_token
        assert key is not None  # a writer exists only when the key is set
        kwargs.setdefault("auth", (key.get_secret_value(), "X"))
        return super().call(method, url, **kwargs)

    def link(self, ticket_id: str) -> str | None:
        return f"{self.settings.freshdesk_api_url}/a/tickets/{ticket_id}"

    def has_note(self, ticket_id: str, action_id: str) -> bool:
        url: str | None = f"{self._ticket(ticket_id)}/conversations"
        params: dict[str, Any] | None = {"per_page": 100, "page": 1}
        while url is not None:
            response = self.call("GET", url, params=params)
            for note in response.json():
                if written_by(action_id, note.get("body"), note.get("body_text")):
                    return True
            url, params = response.links.get("next", {}).get("url"), None
        return False

    def post_note(self, write: WriteBack) -> None:
        self.call(
            "POST",
            f"{self._ticket(write.ticket_id)}/notes",
            json={"body": write.note_html(), "private": True},
        )

    def add_tags(self, ticket_id: str, tags: Sequence[str]) -> None:
        current = list(self.call("GET", self._ticket(ticket_id)).json().get("tags") or [])
        have = {t.lower() for t in current}
        missing = [t for t in tags if t.lower() not in have]
        if missing:
            self.call("PUT", self._ticket(ticket_id), json={"tags": current + missing})
