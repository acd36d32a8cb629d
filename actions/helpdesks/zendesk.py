"""Write-back to Zendesk Support: tags and a private comment, in one ticket update.

- the write: ``PUT /api/v2/tickets/{id}`` with ``ticket.comment`` (``html_body``,
  ``public: false``: an internal note), ``ticket.additional_tags`` (added to the ticket's tags,
  the others kept) and ``ticket.metadata.custom`` naming the action. Zendesk applies the
  update as one audit, so the note and the tags land together or not at all;
- the check before a re-post: ``GET /api/v2/tickets/{id}/audits`` (cursor pagination,
  ``page[size]=100``, ``links.next`` while ``meta.has_more``). An audit whose custom metadata
  names the action, or whose comment event carries its marker, means the note is there; a
  retry then sends the tags alone.

Auth: ``EMAIL/token:TOKEN`` as basic auth when ``TRIAGE_ZENDESK_EMAIL`` is set, else the
token is an OAuth access token (``Authorization: Bearer``). A rate limit is a 429 with
``Retry-After`` in seconds; a concurrent update of the same ticket a 409 (retried).

References: https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/#update-ticket,
https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_audits/,
https://developer.zendesk.com/api-reference/introduction/rate-limits/
"""

from __future__ import annotations

from typing import Any

import requests

from actions.helpdesks.base import HelpdeskWriter, WriteBack, written_by

# The audit metadata key naming the action that wrote a note.
METADATA_KEY = "ticket_triage_action"


class ZendeskWriter(HelpdeskWriter):
    source = "zendesk"

    def _ticket(self, ticket_id: str) -> str:
        if not ticket_id.isdigit():
            raise ValueError(f"not a Zendesk ticket id: {ticket_id!r}")
        return f"{self.settings.zendesk_api_url}/api/v2/tickets/{ticket_id}"

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        token = self.settings.zendesk_api_token
        assert token is not None  # a writer exists only when the token is set
        email = self.settings.zendesk_email
        if email:
            kwargs.setdefault("auth", (f"{email}/token", token.get_secret_value()))
        else:
            kwargs.setdefault("headers", {"authorization": f"Bearer {token.get_secret_value()}"})
        return super().call(method, url, **kwargs)

    def link(self, ticket_id: str) -> str | None:
        return f"{self.settings.zendesk_api_url}/agent/tickets/{ticket_id}"

    def has_note(self, ticket_id: str, action_id: str) -> bool:
        url: str | None = f"{self._ticket(ticket_id)}/audits"
        params: dict[str, Any] | None = {"page[size]": 100}
        while url is not None:
            page = self.call("GET", url, params=params).json()
            for audit in page.get("audits") or []:
                custom = (audit.get("metadata") or {}).get("custom") or {}
                if custom.get(METADATA_KEY) == action_id:
                    return True
                for event in audit.get("events") or []:
                    if event.get("type") == "Comment" and written_by(
                        action_id, event.get("html_body"), event.get("body")
                    ):
                        return True
            more = (page.get("meta") or {}).get("has_more")
            url, params = ((page.get("links") or {}).get("next") if more else None), None
        return False

    def write(self, write: WriteBack) -> None:
        """One update: the note (unless an audit shows it is there) and the tags."""
        ticket: dict[str, Any] = {}
        if write.note is not None and not self.has_note(write.ticket_id, write.action_id):
            ticket["comment"] = {"html_body": write.note_html(), "public": False}
            ticket["metadata"] = {"custom": {METADATA_KEY: write.action_id}}
        if write.tags:
            ticket["additional_tags"] = list(write.tags)
        if ticket:
            self.call("PUT", self._ticket(write.ticket_id), json={"ticket": ticket})
