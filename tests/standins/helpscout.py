"""Help Scout's Mailbox API 2.0 for OAuth tokens, threads, notes and tags, as its reference
documents:

- ``POST /v2/oauth2/token`` (form: ``grant_type=client_credentials``, ``client_id``,
  ``client_secret``): ``{"token_type": "bearer", "access_token", "expires_in"}``; 401
  ``{"error": "invalid_client"}`` for wrong credentials;
- a call with a token that is unknown, revoked or expired: 401;
- ``GET /v2/conversations/{id}/threads?page=N``: HAL, ``_embedded.threads`` and ``page``
  (``size``, ``totalElements``, ``totalPages``, ``number``), 25 threads a page;
- ``POST /v2/conversations/{id}/notes`` ``{"text"}``: 201 with ``Resource-ID``, no body;
- ``GET /v2/conversations/{id}``: the conversation with ``tags`` (``id``, ``color``, ``tag``);
  ``PUT /v2/conversations/{id}/tags`` ``{"tags": [...]}`` replaces them: 204;
- 404 for an unknown conversation.

Help Scout sanitises a note's HTML; this stand-in drops HTML comments from it.

https://developer.helpscout.com/mailbox-api/
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tests.standins import Standin

_COMMENT = re.compile(r"<!--.*?-->", re.S)
PAGE_SIZE = 25


@dataclass
class Conversation:
    tags: list[str] = field(default_factory=list)
    threads: list[dict[str, Any]] = field(default_factory=list)


class HelpScoutStandin(Standin):
    def __init__(self, app_id: str, app_secret: str, expires_in: int = 172800) -> None:
        super().__init__("Help Scout")
        self.app_id, self.app_secret, self.expires_in = app_id, app_secret, expires_in
        self.tokens: dict[str, float] = {}  # access token -> expires at
        self.conversations: dict[str, Conversation] = {}
        self._ids = 100
        app = self.app

        @app.post("/v2/oauth2/token")
        async def token(request: Request) -> Any:
            form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
            if form.get("grant_type") != "client_credentials":
                return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
            if (form.get("client_id"), form.get("client_secret")) != (self.app_id, self.app_secret):
                return JSONResponse(
                    {"error": "invalid_client", "error_description": "Bad client credentials"},
                    status_code=401,
                )
            issued = secrets.token_urlsafe(16)
            self.tokens[issued] = time.time() + self.expires_in
            return {"token_type": "bearer", "access_token": issued, "expires_in": self.expires_in}

        def conversation_or_error(request: Request, conversation_id: str) -> Any:
            auth = request.headers.get("authorization", "")
            expires = self.tokens.get(auth.removeprefix("Bearer "))
            if not auth.startswith("Bearer ") or expires is None or expires < time.time():
                return JSONResponse(
                    {"error": "invalid_token", "error_description": "The access token expired"},
                    status_code=401,
                )
            found = self.conversations.get(conversation_id)
            if found is None:
                return JSONResponse(
                    {"logRef": "standin", "message": "Conversation not found"}, status_code=404
                )
            return found

        @app.get("/v2/conversations/{conversation_id}/threads")
        async def threads(request: Request, conversation_id: str, page: int = 1) -> Any:
            found = conversation_or_error(request, conversation_id)
            if not isinstance(found, Conversation):
                return found
            total = len(found.threads)
            start = (page - 1) * PAGE_SIZE
            return {
                "_embedded": {"threads": found.threads[start : start + PAGE_SIZE]},
                "page": {
                    "size": PAGE_SIZE,
                    "totalElements": total,
                    "totalPages": max(1, -(-total // PAGE_SIZE)),
                    "number": page,
                },
            }

        @app.post("/v2/conversations/{conversation_id}/notes")
        async def note(request: Request, conversation_id: str) -> Any:
            found = conversation_or_error(request, conversation_id)
            if not isinstance(found, Conversation):
                return found
            text = (await request.json()).get("text")
            if not isinstance(text, str) or not text.strip():
                return JSONResponse(
                    {"logRef": "standin", "message": "Bad request",
                     "_embedded": {"errors": [{"path": "text", "message": "may not be empty"}]}},
                    status_code=400,
                )  # fmt: skip
            self._ids += 1
            found.threads.append({"id": self._ids, "type": "note", "body": _COMMENT.sub("", text)})
            return Response(status_code=201, headers={"resource-id": str(self._ids)})

        @app.get("/v2/conversations/{conversation_id}")
        async def show(request: Request, conversation_id: str) -> Any:
            found = conversation_or_error(request, conversation_id)
            if not isinstance(found, Conversation):
                return found
            tags = [{"id": i + 1, "color": "#929499", "tag": t} for i, t in enumerate(found.tags)]
            return {"id": int(conversation_id), "tags": tags}

        @app.put("/v2/conversations/{conversation_id}/tags")
        async def set_tags(request: Request, conversation_id: str) -> Any:
            found = conversation_or_error(request, conversation_id)
            if not isinstance(found, Conversation):
                return found
            found.tags = list(dict.fromkeys((await request.json()).get("tags") or []))
            return Response(status_code=204)

    def add_conversation(
        self, conversation_id: str, *, tags: tuple[str, ...] = (), threads: int = 0
    ) -> Conversation:
        found = Conversation(tags=list(tags))
        for i in range(threads):
            found.threads.append({"id": i + 1, "type": "customer", "body": f"<p>message {i}</p>"})
        self.conversations[conversation_id] = found
        return found
