"""Write-back to GitHub issues: a label and a comment, through the REST API.

- the marker check: ``GET /repos/{owner}/{repo}/issues/{number}/comments`` (``per_page=100``,
  following the ``Link: rel="next"`` header);
- the note: ``POST /repos/{owner}/{repo}/issues/{number}/comments`` ``{"body": ...}`` (201).
  Issue comments are public, so the default note says it is automated, and
  ``TRIAGE_GITHUB_COMMENT=false`` writes labels only;
- the label: ``POST /repos/{owner}/{repo}/issues/{number}/labels`` ``{"labels": [...]}``,
  which adds to the issue's labels (and creates a label the repository lacks).

Auth: ``Authorization: Bearer TOKEN``, with ``X-GitHub-Api-Version: 2022-11-28``.

Rate limits: GitHub answers an exhausted limit with 403 *or* 429; it is a rate limit when
``x-ratelimit-remaining`` is ``0`` (wait until ``x-ratelimit-reset``, epoch seconds), when
``retry-after`` is present, or when the message names a secondary rate limit (wait at least
a minute). Any other 403 is a permanent refusal (the token may not write the repository).

References: https://docs.github.com/en/rest/issues/comments,
https://docs.github.com/en/rest/issues/labels,
https://docs.github.com/en/rest/using-the-rest-api/troubleshooting-the-rest-api
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import requests

from actions.helpdesks.base import HelpdeskWriter, Refused, WriteBack, written_by

# The adapter's id of an issue (producer/webhooks/adapters.py): ``owner/repo#number``.
_ISSUE = re.compile(r"([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)#([0-9]+)")
API_VERSION = "2022-11-28"
# GitHub: without retry-after or a reset time, wait at least a minute after a secondary limit.
SECONDARY_WAIT_S = 60.0
# Public comments say what wrote them.
PUBLIC_NOTICE = "*Automated comment by ticket-triage.*"


class GitHubWriter(HelpdeskWriter):
    source = "github"

    def _issue(self, ticket_id: str) -> str:
        found = _ISSUE.fullmatch(ticket_id)
        if found is None:
            raise ValueError(f"not a GitHub issue id (owner/repo#number): {ticket_id!r}")
        owner, repo, number = found.groups()
        return f"{self.settings.github_api_url}/repos/{quote(owner)}/{quote(repo)}/issues/{number}"

    def _headers(self) -> dict[str, str]:
        token = self.settings.github_api_token
        assert token is not None  # a writer exists only when the token is set
        return {
            "authorization": f"Bearer {token.get_secret_value()}",
            "accept": "application/vnd.github+json",
            "x-github-api-version": API_VERSION,
        }

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("headers", self._headers())
        try:
            return super().call(method, url, **kwargs)
        except Refused as refused:
            raise _rate_limited(refused) from None

    def link(self, ticket_id: str) -> str | None:
        found = _ISSUE.fullmatch(ticket_id)
        if found is None:
            return None
        owner, repo, number = found.groups()
        api = self.settings.github_api_url
        # GitHub Enterprise Server serves its API under /api/v3 of the web host.
        web = (
            "https://github.com" if api == "https://api.github.com" else api.removesuffix("/api/v3")
        )
        return f"{web}/{quote(owner)}/{quote(repo)}/issues/{number}"

    def has_note(self, ticket_id: str, action_id: str) -> bool:
        url: str | None = f"{self._issue(ticket_id)}/comments"
        params: dict[str, Any] | None = {"per_page": 100}
        while url is not None:
            response = self.call("GET", url, params=params)
            if any(written_by(action_id, comment.get("body")) for comment in response.json()):
                return True
            url, params = response.links.get("next", {}).get("url"), None
        return False

    def write(self, write: WriteBack) -> None:
        if not self.settings.github_comment:
            write = replace(write, note=None)
        super().write(write)

    def post_note(self, write: WriteBack) -> None:
        body = f"{PUBLIC_NOTICE}\n\n{write.note_text()}"
        self.call("POST", f"{self._issue(write.ticket_id)}/comments", json={"body": body})

    def add_tags(self, ticket_id: str, tags: Sequence[str]) -> None:
        self.call("POST", f"{self._issue(ticket_id)}/labels", json={"labels": list(tags)})


def _rate_limited(refused: Refused) -> Refused:
    """A 403 that is GitHub's rate limit, as a 429 with GitHub's wait; else as it was."""
    response = refused.response
    if response.status_code != 403:
        return refused
    headers = response.headers
    secondary = "secondary rate limit" in response.text.lower()
    exhausted = headers.get("x-ratelimit-remaining") == "0"
    if not (secondary or exhausted or "retry-after" in headers):
        return refused
    # requested_wait_s reads retry-after and x-ratelimit-reset; a bare secondary limit waits
    # the minute GitHub asks for.
    wait = None if ("retry-after" in headers or exhausted) else SECONDARY_WAIT_S
    return Refused(response, status=429, wait_s=wait)
