"""Zendesk Support's ticket update and ticket audits, as the API reference documents them:

- ``PUT /api/v2/tickets/{id}`` (``.json`` optional) ``{"ticket": {...}}``: 200 with
  ``ticket`` and ``audit``; ``comment`` (``body`` or ``html_body``, ``public``) adds a
  comment, ``additional_tags`` adds tags, ``tags`` replaces them, ``metadata.custom`` is kept
  on the audit; an update that changes nothing makes no audit;
- ``GET /api/v2/tickets/{id}/audits``: cursor pagination (``page[size]`` up to 100,
  ``page[after]``), ``meta.has_more`` / ``after_cursor`` and ``links.next``;
- 401 ``{"error": "Couldn't authenticate you"}``; 404 ``{"error": "RecordNotFound",
  "description": "Not found"}``; 422 ``RecordInvalid`` for an empty comment.

Zendesk sanitises a comment's HTML; this stand-in drops HTML comments from ``html_body`` (the
strictest sanitiser), so a test proves the product's note is still recognised without one.

https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/,
https://developer.zendesk.com/api-reference/ticketing/tickets/ticket_audits/
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tests.standins import Standin

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"<[^>]+>")


@dataclass
class Ticket:
    tags: list[str] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)

    def comments(self) -> list[dict[str, Any]]:
        return [e for a in self.audits for e in a["events"] if e["type"] == "Comment"]


class ZendeskStandin(Standin):
    def __init__(self, email: str, token: str) -> None:
        super().__init__("Zendesk")
        basic = base64.b64encode(f"{email}/token:{token}".encode()).decode()
        # An API token as basic auth, or an OAuth access token (the same value here).
        self.accepted = {f"Basic {basic}", f"Bearer {token}"}
        self.tickets: dict[str, Ticket] = {}
        self._ids = 5000
        app = self.app

        def ticket_or_error(request: Request, ticket_id: str) -> Any:
            if request.headers.get("authorization") not in self.accepted:
                return JSONResponse({"error": "Couldn't authenticate you"}, status_code=401)
            ticket = self.tickets.get(ticket_id.removesuffix(".json"))
            if ticket is None:
                return JSONResponse(
                    {"error": "RecordNotFound", "description": "Not found"}, status_code=404
                )
            return ticket

        @app.put("/api/v2/tickets/{ticket_id}")
        async def update(request: Request, ticket_id: str) -> Any:
            ticket = ticket_or_error(request, ticket_id)
            if not isinstance(ticket, Ticket):
                return ticket
            change = (await request.json())["ticket"]
            events: list[dict[str, Any]] = []
            comment = change.get("comment")
            if comment is not None:
                html = _COMMENT.sub("", comment.get("html_body") or "")
                body = comment.get("body") or _TAG.sub("", html)
                if not body.strip():
                    return JSONResponse(
                        {
                            "error": "RecordInvalid",
                            "description": "Record validation errors",
                            "details": {"base": [{"description": "Comment: cannot be blank"}]},
                        },
                        status_code=422,
                    )
                events.append(
                    {
                        "id": self._next(),
                        "type": "Comment",
                        "body": body,
                        "html_body": html or body,
                        "public": comment.get("public", True),
                    }
                )
            before = list(ticket.tags)
            if "tags" in change:
                ticket.tags = list(dict.fromkeys(change["tags"]))
            for tag in change.get("additional_tags") or []:
                if tag not in ticket.tags:
                    ticket.tags.append(tag)
            if ticket.tags != before:
                events.append(
                    {"id": self._next(), "type": "Change", "field_name": "tags",
                     "value": list(ticket.tags), "previous_value": before}
                )  # fmt: skip
            audit = None
            if events:
                custom = (change.get("metadata") or {}).get("custom") or {}
                audit = {
                    "id": self._next(),
                    "ticket_id": int(ticket_id.removesuffix(".json")),
                    "metadata": {"system": {"client": "ticket-triage"}, "custom": custom},
                    "events": events,
                }
                ticket.audits.append(audit)
            return {"ticket": {"id": int(ticket_id.removesuffix(".json")), "tags": ticket.tags},
                    "audit": audit}  # fmt: skip

        @app.get("/api/v2/tickets/{ticket_id}/audits")
        async def audits(request: Request, ticket_id: str) -> Any:
            ticket = ticket_or_error(request, ticket_id)
            if not isinstance(ticket, Ticket):
                return ticket
            size = min(100, int(request.query_params.get("page[size]", "100")))
            start = int(request.query_params.get("page[after]", "0"))
            page = ticket.audits[start : start + size]
            more = start + size < len(ticket.audits)
            after = str(start + size) if more else None
            nxt = str(request.url.include_query_params(**{"page[after]": after})) if more else None
            return {
                "audits": page,
                "meta": {"has_more": more, "after_cursor": after, "before_cursor": None},
                "links": {"prev": None, "next": nxt},
            }

    def _next(self) -> int:
        self._ids += 1
        return self._ids

    def add_ticket(self, ticket_id: str, *, tags: tuple[str, ...] = (), audits: int = 0) -> Ticket:
        """A ticket with ``audits`` earlier audits (an agent's public replies)."""
        ticket = Ticket(tags=list(tags))
        for i in range(audits):
            ticket.audits.append(
                {"id": i + 1, "metadata": {"system": {}, "custom": {}},
                 "events": [{"id": i + 1, "type": "Comment", "body": f"reply {i}",
                             "html_body": f"<p>reply {i}</p>", "public": True}]}
            )  # fmt: skip
        self.tickets[ticket_id] = ticket
        return ticket
