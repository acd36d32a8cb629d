"""Stand-ins for the helpdesks' REST APIs, served for real (uvicorn, tests.services.served_app).

Each vendor module builds a FastAPI app answering as that vendor's API reference documents,
on a :class:`Standin`, which records every request and lets a test script failures: the next
calls to matching paths get the scripted answers first (a 429 with the vendor's rate-limit
headers, a 5xx, a 422...), then the app answers normally.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from tests.services import served_app


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Scripted:
    """An answer given instead of the app's to the next call matching ``method`` and ``path``
    (a regular expression searched in the path)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    method: str | None = None
    path: str = ""
    # True: the app handles the call first (its change is made) and this answer replaces
    # its own, as when the vendor did the work and its answer was lost on the way.
    after: bool = False


class Standin:
    """A vendor API's app plus its record of calls and its script of failures."""

    def __init__(self, name: str) -> None:
        self.app = FastAPI(title=f"{name} stand-in")
        self.calls: list[Call] = []
        # Seconds every answer waits after the work is done: a worker killed meanwhile has
        # its change made and never sees the answer.
        self.delay_s = 0.0
        self._script: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self.app.middleware("http")(self._record)

    def fail_next(self, *answers: Scripted) -> None:
        with self._lock:
            self._script.extend(answers)

    def calls_to(self, method: str, path_pattern: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and re.search(path_pattern, c.path)]

    def _take(self, method: str, path: str) -> Scripted | None:
        with self._lock:
            for answer in self._script:
                if (answer.method in (None, method)) and re.search(answer.path, path):
                    self._script.remove(answer)
                    return answer
        return None

    async def _record(self, request: Request, call_next: Any) -> Any:
        body = await request.body()
        call = Call(
            request.method,
            request.url.path,
            request.url.query,
            {k.lower(): v for k, v in request.headers.items()},
            body,
        )
        with self._lock:
            self.calls.append(call)
        scripted = self._take(request.method, request.url.path)
        if scripted is not None:
            if scripted.after:
                await call_next(request)
            content = b"" if scripted.body is None else json.dumps(scripted.body).encode()
            return Response(
                content,
                status_code=scripted.status,
                headers=scripted.headers,
                media_type="application/json" if content else None,
            )
        response = await call_next(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return response

    @contextmanager
    def served(self) -> Iterator[str]:
        """The app on a free port: its base URL."""
        with served_app(self.app) as url:
            yield url
