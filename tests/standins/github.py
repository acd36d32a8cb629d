"""GitHub's REST API for issue comments and labels, as its reference documents it:

- ``GET /repos/{owner}/{repo}/issues/{n}/comments``: 200, a JSON array of comments, paged by
  ``per_page`` (max 100) and ``page``, with a ``Link`` header naming the ``next`` page;
- ``POST .../comments`` ``{"body"}``: 201 and the comment; 422 "Validation Failed" without
  a body;
- ``POST .../labels`` ``{"labels": [...]}``: 200 and the issue's labels after adding;
- a token other than the stand-in's: 401 ``{"message": "Bad credentials"}``; an unknown
  issue: 404 ``{"message": "Not Found"}``.

https://docs.github.com/en/rest/issues/comments, https://docs.github.com/en/rest/issues/labels
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from tests.standins import Standin

DOCS = "https://docs.github.com/rest"


@dataclass
class Issue:
    comments: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(
        {"message": message, "documentation_url": DOCS, "status": str(status), **extra},
        status_code=status,
    )


class GitHubStandin(Standin):
    def __init__(self, token: str) -> None:
        super().__init__("GitHub")
        self.token = token
        self.issues: dict[str, Issue] = {}
        self._next_id = 1000
        app = self.app

        def issue_or_error(request: Request, owner: str, repo: str, n: int) -> Any:
            auth = request.headers.get("authorization", "")
            if auth not in (f"Bearer {self.token}", f"token {self.token}"):
                return _error(401, "Bad credentials")
            issue = self.issues.get(f"{owner}/{repo}#{n}")
            return issue if issue is not None else _error(404, "Not Found")

        @app.get("/repos/{owner}/{repo}/issues/{n}/comments")
        async def comments(
            request: Request, owner: str, repo: str, n: int, per_page: int = 30, page: int = 1
        ) -> Any:
            issue = issue_or_error(request, owner, repo, n)
            if not isinstance(issue, Issue):
                return issue
            per_page = max(1, min(per_page, 100))
            start = (page - 1) * per_page
            headers = {}
            if start + per_page < len(issue.comments):
                url = request.url.include_query_params(page=page + 1, per_page=per_page)
                headers["link"] = f'<{url}>; rel="next"'
            return JSONResponse(issue.comments[start : start + per_page], headers=headers)

        @app.post("/repos/{owner}/{repo}/issues/{n}/comments")
        async def comment(request: Request, owner: str, repo: str, n: int) -> Any:
            issue = issue_or_error(request, owner, repo, n)
            if not isinstance(issue, Issue):
                return issue
            body = (await request.json()).get("body")
            if not isinstance(body, str) or not body:
                return _error(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
                )
            self._next_id += 1
            made = {"id": self._next_id, "body": body, "user": {"login": "triage-bot"}}
            issue.comments.append(made)
            return JSONResponse(made, status_code=201)

        @app.post("/repos/{owner}/{repo}/issues/{n}/labels")
        async def labels(request: Request, owner: str, repo: str, n: int) -> Any:
            issue = issue_or_error(request, owner, repo, n)
            if not isinstance(issue, Issue):
                return issue
            for name in (await request.json()).get("labels", []):
                if name not in issue.labels:
                    issue.labels.append(name)
            return [{"name": name, "default": False} for name in issue.labels]

    def add_issue(
        self, ticket_id: str, *, comments: int = 0, labels: tuple[str, ...] = ()
    ) -> Issue:
        """An issue (``owner/repo#n``) with ``comments`` comments by others."""
        issue = Issue(labels=list(labels))
        for i in range(comments):
            issue.comments.append({"id": i + 1, "body": f"comment {i + 1}", "user": {"login": "u"}})
        self.issues[ticket_id] = issue
        return issue
