"""Jira's REST API v2 for comments, labels and issue links, as its reference documents:

- ``GET /rest/api/2/issue/{key}/comment``: ``startAt``, ``maxResults``, ``total``,
  ``comments``; ``POST`` ``{"body", "properties"}``: 201 and the comment; 400 with
  ``errors.comment`` for an empty body;
- ``PUT /rest/api/2/issue/{key}`` ``{"update": {"labels": [{"add"|"remove": ...}]}}``: 204;
- ``GET /rest/api/2/issue/{key}?fields=issuelinks``: the issue's links, each with its ``type``
  and the other issue as ``inwardIssue`` or ``outwardIssue``;
- ``POST /rest/api/2/issueLink``: 201; 404 ``No issue link type with name ...`` for an
  unknown type;
- 401 for wrong credentials; 404 ``Issue does not exist or you do not have permission to see
  it.`` for an unknown issue.

https://developer.atlassian.com/cloud/jira/platform/rest/v2/
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tests.standins import Standin

LINK_TYPES = {
    "Duplicate": ("is duplicated by", "duplicates"),
    "Relates": ("relates to", "relates to"),
}


def _errors(status: int, *messages: str, **errors: str) -> JSONResponse:
    return JSONResponse({"errorMessages": list(messages), "errors": errors}, status_code=status)


@dataclass
class Issue:
    labels: list[str] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)


class JiraStandin(Standin):
    def __init__(self, email: str, token: str) -> None:
        super().__init__("Jira")
        basic = base64.b64encode(f"{email}:{token}".encode()).decode()
        self.accepted = {f"Basic {basic}", f"Bearer {token}"}
        self.issues: dict[str, Issue] = {}
        self._ids = 10000
        app = self.app

        def issue_or_error(request: Request, key: str) -> Any:
            if request.headers.get("authorization") not in self.accepted:
                return Response(
                    "Client must be authenticated to access this resource.", status_code=401
                )
            issue = self.issues.get(key)
            if issue is None:
                return _errors(404, "Issue does not exist or you do not have permission to see it.")
            return issue

        @app.get("/rest/api/2/issue/{key}/comment")
        async def comments(
            request: Request, key: str, startAt: int = 0, maxResults: int = 50
        ) -> Any:
            issue = issue_or_error(request, key)
            if not isinstance(issue, Issue):
                return issue
            size = max(1, min(maxResults, 100))
            return {
                "startAt": startAt,
                "maxResults": size,
                "total": len(issue.comments),
                "comments": issue.comments[startAt : startAt + size],
            }

        @app.post("/rest/api/2/issue/{key}/comment")
        async def comment(request: Request, key: str) -> Any:
            issue = issue_or_error(request, key)
            if not isinstance(issue, Issue):
                return issue
            sent = await request.json()
            if not str(sent.get("body") or "").strip():
                return _errors(400, comment="Comment body can not be empty!")
            self._ids += 1
            made = {"id": str(self._ids), "body": sent["body"],
                    "properties": sent.get("properties") or []}  # fmt: skip
            issue.comments.append(made)
            return JSONResponse(made, status_code=201)

        @app.put("/rest/api/2/issue/{key}")
        async def edit(request: Request, key: str) -> Any:
            issue = issue_or_error(request, key)
            if not isinstance(issue, Issue):
                return issue
            for op in ((await request.json()).get("update") or {}).get("labels") or []:
                if "add" in op and op["add"] not in issue.labels:
                    issue.labels.append(op["add"])
                if "remove" in op and op["remove"] in issue.labels:
                    issue.labels.remove(op["remove"])
            return Response(status_code=204)

        @app.get("/rest/api/2/issue/{key}")
        async def show(request: Request, key: str) -> Any:
            issue = issue_or_error(request, key)
            if not isinstance(issue, Issue):
                return issue
            return {"key": key, "fields": {"issuelinks": issue.links, "labels": issue.labels}}

        @app.post("/rest/api/2/issueLink")
        async def link(request: Request) -> Any:
            sent = await request.json()
            inward, outward = sent["inwardIssue"]["key"], sent["outwardIssue"]["key"]
            for key in (inward, outward):
                found = issue_or_error(request, key)
                if not isinstance(found, Issue):
                    return found
            name = sent["type"]["name"]
            if name not in LINK_TYPES:
                return _errors(404, f"No issue link type with name '{name}' found.")
            kind = {"name": name, "inward": LINK_TYPES[name][0], "outward": LINK_TYPES[name][1]}
            self._ids += 1
            self.issues[inward].links.append(
                {"id": str(self._ids), "type": kind, "outwardIssue": {"key": outward}}
            )
            self.issues[outward].links.append(
                {"id": str(self._ids), "type": kind, "inwardIssue": {"key": inward}}
            )
            return Response(status_code=201)

    def add_issue(self, key: str, *, labels: tuple[str, ...] = (), comments: int = 0) -> Issue:
        issue = Issue(labels=list(labels))
        for i in range(comments):
            issue.comments.append({"id": str(i + 1), "body": f"comment {i}", "properties": []})
        self.issues[key] = issue
        return issue
