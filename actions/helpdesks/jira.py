"""Write-back to Jira (Cloud, Server and Data Center): labels, a comment and, for a duplicate,
an issue link, through the REST API v2 (the same on every Jira).

- the check before a re-post: ``GET /rest/api/2/issue/{key}/comment`` (``startAt`` /
  ``maxResults`` / ``total``), looking for the comment's reference line;
- the comment: ``POST /rest/api/2/issue/{key}/comment`` with the property
  ``sd.public.comment: {"internal": true}``, which makes it an internal comment in Jira
  Service Management (plain Jira keeps it as a comment property and shows the comment);
- the labels: ``PUT /rest/api/2/issue/{key}`` ``{"update": {"labels": [{"add": ...}]}}``
  (adds; the other labels stay);
- the link: ``GET /rest/api/2/issue/{key}?fields=issuelinks`` and, unless the two issues are
  already linked with that type, ``POST /rest/api/2/issueLink`` with the type named by
  ``TRIAGE_JIRA_LINK_TYPE``, the new issue as ``inwardIssue`` and the canonical one as
  ``outwardIssue``.

Auth: ``EMAIL:API_TOKEN`` as basic auth on Cloud (``TRIAGE_JIRA_EMAIL`` set), a personal
access token as ``Authorization: Bearer`` on Server / Data Center. A rate limit is a 429
with ``Retry-After``.

References: https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issue-comments/,
https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issue-links/,
https://developer.atlassian.com/cloud/jira/platform/rest/v2/api-group-issues/#api-rest-api-2-issue-issueidorkey-put,
https://developer.atlassian.com/cloud/jira/platform/rate-limiting/
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import requests

from actions.helpdesks.base import HelpdeskWriter, WriteBack, written_by

_KEY = re.compile(r"[A-Z][A-Z0-9_]*-[0-9]+")
PAGE = 100
# Jira Service Management reads this comment property: internal, agents only.
INTERNAL = [{"key": "sd.public.comment", "value": {"internal": True}}]


class JiraWriter(HelpdeskWriter):
    source = "jira"

    def _api(self, path: str) -> str:
        return f"{self.settings.jira_api_url}/rest/api/2/{path}"

    def _issue(self, key: str) -> str:
        if not _KEY.fullmatch(key):
            raise ValueError(f"not a Jira issue key: {key!r}")
        return self._api(f"issue/{quote(key)}")

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        token = self.settings.jira_api_token
        assert token is not None  # a writer exists only when the token is set
        if self.settings.jira_email:
            kwargs.setdefault("auth", (self.settings.jira_email, token.get_secret_value()))
        else:
            kwargs.setdefault("headers", {"authorization": f"Bearer {token.get_secret_value()}"})
        return super().call(method, url, **kwargs)

    def link(self, ticket_id: str) -> str | None:
        return f"{self.settings.jira_api_url}/browse/{quote(ticket_id)}"

    def has_note(self, ticket_id: str, action_id: str) -> bool:
        start = 0
        while True:
            page = self.call(
                "GET",
                f"{self._issue(ticket_id)}/comment",
                params={"startAt": start, "maxResults": PAGE},
            ).json()
            comments = page.get("comments") or []
            if any(written_by(action_id, c.get("body")) for c in comments):
                return True
            start += len(comments)
            if not comments or start >= int(page.get("total") or 0):
                return False

    def post_note(self, write: WriteBack) -> None:
        self.call(
            "POST",
            f"{self._issue(write.ticket_id)}/comment",
            json={"body": write.note_plain(), "properties": INTERNAL},
        )

    def add_tags(self, ticket_id: str, tags: Sequence[str]) -> None:
        update = {"labels": [{"add": tag} for tag in tags]}
        self.call("PUT", self._issue(ticket_id), json={"update": update})

    def write(self, write: WriteBack) -> None:
        super().write(write)
        canonical = write.canonical
        if (
            write.route == "duplicate"
            and canonical is not None
            and _KEY.fullmatch(canonical.ticket_id)
        ):
            self._link(write.ticket_id, canonical.ticket_id)

    def _link(self, key: str, canonical: str) -> None:
        """``key`` linked to ``canonical`` with TRIAGE_JIRA_LINK_TYPE, once."""
        kind = self.settings.jira_link_type
        issue = self.call("GET", self._issue(key), params={"fields": "issuelinks"}).json()
        for link in (issue.get("fields") or {}).get("issuelinks") or []:
            other = link.get("outwardIssue") or link.get("inwardIssue") or {}
            if (link.get("type") or {}).get("name") == kind and other.get("key") == canonical:
                return
        self.call(
            "POST",
            self._api("issueLink"),
            json={
                "type": {"name": kind},
                "inwardIssue": {"key": key},
                "outwardIssue": {"key": canonical},
            },
        )
