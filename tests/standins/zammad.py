"""Zammad's REST API for ticket search, articles and tags, as its reference documents:

- ``GET /api/v1/tickets/search?query=…&expand=true``: an array of tickets (``id``,
  ``number``, ...); without ``expand``, ``tickets`` (ids), ``tickets_count`` and ``assets``;
- ``GET /api/v1/ticket_articles/by_ticket/{id}``: the ticket's articles;
- ``POST /api/v1/ticket_articles``: 201 and the article; 422 ``{"error": ...}`` without a body;
- ``POST /api/v1/tags/add`` ``{"object", "o_id", "item"}``: 200 ``true``;
- 401 ``{"error": "Invalid token!"}``-style answers for a wrong token; 404 ``{"error":
  "Couldn't find Ticket with 'id'=N"}``.

Zammad sanitises an article's HTML; this stand-in drops HTML comments from it.

https://docs.zammad.org/en/latest/api/intro.html
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tests.standins import Standin

_COMMENT = re.compile(r"<!--.*?-->", re.S)


@dataclass
class Ticket:
    id: int
    number: str
    tags: list[str] = field(default_factory=list)
    articles: list[dict[str, Any]] = field(default_factory=list)


class ZammadStandin(Standin):
    def __init__(self, token: str) -> None:
        super().__init__("Zammad")
        self.token = token
        self.tickets: dict[int, Ticket] = {}
        self._ids = 700
        app = self.app

        def refused(request: Request) -> JSONResponse | None:
            if request.headers.get("authorization") != f"Token token={self.token}":
                return JSONResponse({"error": "Invalid token!"}, status_code=401)
            return None

        def ticket_or_error(ticket_id: int) -> Any:
            ticket = self.tickets.get(ticket_id)
            if ticket is None:
                return JSONResponse(
                    {"error": f"Couldn't find Ticket with 'id'={ticket_id}"}, status_code=404
                )
            return ticket

        @app.get("/api/v1/tickets/search")
        async def search(request: Request, query: str, expand: bool = False) -> Any:
            if (error := refused(request)) is not None:
                return error
            number = query.removeprefix("number:")
            found = [t for t in self.tickets.values() if t.number == number]
            if expand:
                return [{"id": t.id, "number": t.number, "title": "t"} for t in found]
            return {
                "tickets": [t.id for t in found],
                "tickets_count": len(found),
                "assets": {"Ticket": {str(t.id): {"id": t.id, "number": t.number} for t in found}},
            }

        @app.get("/api/v1/ticket_articles/by_ticket/{ticket_id}")
        async def articles(request: Request, ticket_id: int) -> Any:
            if (error := refused(request)) is not None:
                return error
            ticket = ticket_or_error(ticket_id)
            return ticket.articles if isinstance(ticket, Ticket) else ticket

        @app.post("/api/v1/ticket_articles")
        async def article(request: Request) -> Any:
            if (error := refused(request)) is not None:
                return error
            sent = await request.json()
            ticket = ticket_or_error(int(sent.get("ticket_id") or 0))
            if not isinstance(ticket, Ticket):
                return ticket
            if not str(sent.get("body") or "").strip():
                return JSONResponse({"error": "Need at least article: body"}, status_code=422)
            self._ids += 1
            made = {
                "id": self._ids,
                "ticket_id": ticket.id,
                "body": _COMMENT.sub("", sent["body"]),
                "content_type": sent.get("content_type", "text/plain"),
                "type": sent.get("type", "note"),
                "internal": bool(sent.get("internal", False)),
            }
            ticket.articles.append(made)
            return JSONResponse(made, status_code=201)

        @app.post("/api/v1/tags/add")
        async def add_tag(request: Request) -> Any:
            if (error := refused(request)) is not None:
                return error
            sent = await request.json()
            ticket = ticket_or_error(int(sent.get("o_id") or 0))
            if not isinstance(ticket, Ticket):
                return ticket
            if sent["item"] not in ticket.tags:
                ticket.tags.append(sent["item"])
            return True

    def add_ticket(self, number: str, *, tags: tuple[str, ...] = ()) -> Ticket:
        self._ids += 1
        ticket = Ticket(id=self._ids, number=number, tags=list(tags))
        self.tickets[ticket.id] = ticket
        return ticket
