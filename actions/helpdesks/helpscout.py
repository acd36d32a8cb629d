"""Write-back to Help Scout: a note and tags on the conversation, through the Mailbox API 2.0.

- auth: OAuth2 client credentials. ``POST /v2/oauth2/token`` with ``grant_type=
  client_credentials``, the app's id and secret gives an access token valid for
  ``expires_in`` seconds (two days); it is kept per process, fetched again a minute before it
  expires, and once more when a call answers 401 (the call is then repeated once; a second
  401 is a refusal);
- the check before a re-post: ``GET /v2/conversations/{id}/threads`` (HAL:
  ``_embedded.threads``, ``page.number`` of ``page.totalPages``), looking for the note's
  reference line;
- the note: ``POST /v2/conversations/{id}/notes`` ``{"text": HTML}`` (notes are internal:
  customers never see them);
- the tags: ``PUT /v2/conversations/{id}/tags`` *replaces* the set, so ``GET
  /v2/conversations/{id}`` reads it first and the new tag is added to it (nothing is written
  when it is there). A tag an agent adds between the two calls is lost.

A rate limit is a 429 whose wait is ``X-RateLimit-Retry-After`` (seconds).

References: https://developer.helpscout.com/mailbox-api/overview/authentication/,
https://developer.helpscout.com/mailbox-api/endpoints/conversations/threads/list/,
https://developer.helpscout.com/mailbox-api/endpoints/conversations/threads/note/,
https://developer.helpscout.com/mailbox-api/endpoints/conversations/tags/update/,
https://developer.helpscout.com/mailbox-api/overview/rate-limiting/
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import requests

from actions.helpdesks.base import HelpdeskWriter, Refused, WriteBack, written_by
from config.settings import Settings

# Fetch a new token this long before the old one expires (half its life if that is shorter).
EARLY_S = 60.0


class HelpScoutWriter(HelpdeskWriter):
    source = "helpscout"

    def __init__(self, settings: Settings, http: requests.Session) -> None:
        super().__init__(settings, http)
        self._token: tuple[str, float] | None = None  # (access token, expires at)
        self._token_lock = threading.Lock()

    def _conversation(self, ticket_id: str) -> str:
        if not ticket_id.isdigit():
            raise ValueError(f"not a Help Scout conversation id: {ticket_id!r}")
        return f"{self.settings.helpscout_api_url}/v2/conversations/{ticket_id}"

    def access_token(self, *, renew: bool = False) -> str:
        """The app's access token, fetched when there is none, it nears expiry, or ``renew``."""
        with self._token_lock:
            if self._token is not None and not renew and time.time() < self._token[1]:
                return self._token[0]
            secret = self.settings.helpscout_app_secret
            assert secret is not None  # a writer exists only when the app is configured
            try:
                answer = (
                    super()
                    .call(
                        "POST",
                        f"{self.settings.helpscout_api_url}/v2/oauth2/token",
                        data={
                            "grant_type": "client_credentials",
                            "client_id": self.settings.helpscout_app_id,
                            "client_secret": secret.get_secret_value(),
                        },
                    )
                    .json()
                )
            except Refused as refused:
                if refused.status in (400, 401):
                    raise ValueError(
                        "Help Scout refused the app's credentials "
                        "(TRIAGE_HELPSCOUT_APP_ID, TRIAGE_HELPSCOUT_APP_SECRET): "
                        f"HTTP {refused.status} {refused.response.text[:200]}"
                    ) from None
                raise
            lifetime = float(answer.get("expires_in") or 7200)
            expires = time.time() + lifetime - min(EARLY_S, lifetime / 2)
            self._token = (str(answer["access_token"]), expires)
            return self._token[0]

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        for renew in (False, True):
            headers = {"authorization": f"Bearer {self.access_token(renew=renew)}"}
            try:
                return super().call(method, url, headers=headers, **kwargs)
            except Refused as refused:
                if refused.status == 401 and not renew:
                    continue  # revoked or expired early: one new token, one more try
                wait = refused.response.headers.get("x-ratelimit-retry-after")
                if refused.status == 429 and wait and wait.strip().isdigit():
                    raise Refused(refused.response, wait_s=float(wait)) from None
                raise
        raise AssertionError("unreachable")

    def link(self, ticket_id: str) -> str | None:
        return f"https://secure.helpscout.net/conversation/{ticket_id}"

    def has_note(self, ticket_id: str, action_id: str) -> bool:
        page, pages = 1, 1
        while page <= pages:
            answer = self.call(
                "GET", f"{self._conversation(ticket_id)}/threads", params={"page": page}
            ).json()
            threads = (answer.get("_embedded") or {}).get("threads") or []
            if any(written_by(action_id, t.get("body")) for t in threads):
                return True
            pages = int((answer.get("page") or {}).get("totalPages") or 1)
            page += 1
        return False

    def post_note(self, write: WriteBack) -> None:
        self.call(
            "POST", f"{self._conversation(write.ticket_id)}/notes", json={"text": write.note_html()}
        )

    def add_tags(self, ticket_id: str, tags: Sequence[str]) -> None:
        conversation = self.call("GET", self._conversation(ticket_id)).json()
        current = [t.get("tag") for t in conversation.get("tags") or [] if t.get("tag")]
        have = {t.lower() for t in current}
        missing = [t for t in tags if t.lower() not in have]
        if missing:
            self.call(
                "PUT", f"{self._conversation(ticket_id)}/tags", json={"tags": current + missing}
            )
