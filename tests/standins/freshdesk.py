"""Freshdesk's API v2 for notes, conversations and ticket tags, as its reference documents:

- ``GET /api/v2/tickets/{id}/conversations``: an array, ``per_page`` (max 100) and ``page``,
  a ``link`` header naming the next page when there is one;
- ``POST /api/v2/tickets/{id}/notes`` ``{"body", "private"}``: 201 and the note; 400
  ``Validation failed`` without a body;
- ``GET /api/v2/tickets/{id}``: the ticket with its ``tags``; ``PUT`` with ``tags``
  replaces the list;
- 401 ``{"code": "invalid_credentials", ...}`` for a wrong key; 404 for an unknown ticket.

Freshdesk sanitises a note's HTML; this stand-in drops HTML comments from it (the strictest
sanitiser) and derives ``body_text`` from it.

https://developers.freshdesk.com/api/
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tests.standins import Standin

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"<[^>]+>")


@dataclass
class Ticket:
    tags: list[str] = field(default_factory=list)
    conversations: list[dict[str, Any]] = field(default_factory=list)


class FreshdeskStandin(Standin):
    def __init__(self, api_key: str) -> None:
        super().__init__("Freshdesk")
        self.auth = "Basic " + base64.b64encode(f"{api_key}:X".encode()).decode()
        self.tickets: dict[str, Ticket] = {}
        self._ids = 9000
        app = self.app

        def ticket_or_error(request: Request, ticket_id: str) -> Any:
            if request.headers.get("authorization") != self.auth:
                return JSONResponse(
                    {"code": "invalid_credentials",
                     "message": "You have to be logged in to perform this action."},
                    status_code=401,
                )  # fmt: skip
            ticket = self.tickets.get(ticket_id)
            return ticket if ticket is not None else Response(status_code=404)

        @app.get("/api/v2/tickets/{ticket_id}/conversations")
        async def conversations(
            request: Request, ticket_id: str, per_page: int = 30, page: int = 1
        ) -> Any:
            ticket = ticket_or_error(request, ticket_id)
            if not isinstance(ticket, Ticket):
                return ticket
            per_page = max(1, min(per_page, 100))
            start = (page - 1) * per_page
            headers = {}
            if start + per_page < len(ticket.conversations):
                url = request.url.include_query_params(page=page + 1, per_page=per_page)
                headers["link"] = f'<{url}>; rel="next"'
            return JSONResponse(ticket.conversations[start : start + per_page], headers=headers)

        @app.post("/api/v2/tickets/{ticket_id}/notes")
        async def note(request: Request, ticket_id: str) -> Any:
            ticket = ticket_or_error(request, ticket_id)
            if not isinstance(ticket, Ticket):
                return ticket
            sent = await request.json()
            if not isinstance(sent.get("body"), str) or not sent["body"].strip():
                return JSONResponse(
                    {"description": "Validation failed",
                     "errors": [{"field": "body", "message": "It should be a/an String",
                                 "code": "missing_field"}]},
                    status_code=400,
                )  # fmt: skip
            self._ids += 1
            body = _COMMENT.sub("", sent["body"])
            made = {
                "id": self._ids,
                "body": body,
                "body_text": _TAG.sub("", body),
                "private": bool(sent.get("private", True)),
                "incoming": False,
                "ticket_id": int(ticket_id),
            }
            ticket.conversations.append(made)
            return JSONResponse(made, status_code=201)

        @app.get("/api/v2/tickets/{ticket_id}")
        async def show(request: Request, ticket_id: str) -> Any:
            ticket = ticket_or_error(request, ticket_id)
            if not isinstance(ticket, Ticket):
                return ticket
            return {"id": int(ticket_id), "tags": ticket.tags, "status": 2}

        @app.put("/api/v2/tickets/{ticket_id}")
        async def update(request: Request, ticket_id: str) -> Any:
            ticket = ticket_or_error(request, ticket_id)
            if not isinstance(ticket, Ticket):
                return ticket
            tags = (await request.json()).get("tags")
            if not isinstance(tags, list):
                return JSONResponse(
                    {"description": "Validation failed",
                     "errors": [{"field": "tags", "message": "It should be an Array",
                                 "code": "datatype_mismatch"}]},
                    status_code=400,
                )  # fmt: skip
            ticket.tags = list(dict.fromkeys(tags))
            return {"id": int(ticket_id), "tags": ticket.tags, "status": 2}

    def add_ticket(self, ticket_id: str, *, tags: tuple[str, ...] = (), notes: int = 0) -> Ticket:
        ticket = Ticket(tags=list(tags))
        for i in range(notes):
            ticket.conversations.append(
                {"id": i + 1, "body": f"<div>reply {i}</div>", "body_text": f"reply {i}",
                 "private": False, "incoming": True, "ticket_id": int(ticket_id)}
            )  # fmt: skip
        self.tickets[ticket_id] = ticket
        return ticket
