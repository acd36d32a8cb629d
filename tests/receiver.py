"""A webhook receiver for the outbox tests: a real HTTP server in a thread that records every
request and answers as told (a script of answers, then a default), and can be taken down
and brought back on the same port (connections refused meanwhile)."""

from __future__ import annotations

import base64
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import standardwebhooks

from tests.services import free_port

# A signing secret in the Standard Webhooks form: whsec_ and the base64 of 32 bytes.
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


@dataclass(frozen=True)
class Received:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    # The body as the reference library returned it on arrival, or why it refused it (the
    # timestamp check makes a later verification fail by itself).
    verified: Any = None
    refused: str | None = None


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"ok": true}'
    delay_s: float = 0.0


class Receiver:
    def __init__(self, secret: str | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.secret = secret
        self.received: list[Received] = []
        self.script: deque[Answer] = deque()
        self.default = Answer()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.start()

    def answer(self, *answers: Answer) -> None:
        """Answer the next requests so, in order; then the default."""
        with self._lock:
            self.script.extend(answers)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified, refused = None, None
                if receiver.secret is not None:
                    try:
                        verified = standardwebhooks.Webhook(receiver.secret).verify(body, headers)
                    except Exception as exc:
                        refused = f"{type(exc).__name__}: {exc}"
                with receiver._lock:
                    answer = receiver.script.popleft() if receiver.script else receiver.default
                    receiver.received.append(
                        Received(
                            time.time(), self.path, headers, body, answer.status, verified, refused
                        )
                    )
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender was killed while waiting: the fault tests do that

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: the port refuses connections until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[Received]:
        """The requests answered 2xx."""
        with self._lock:
            return [r for r in self.received if 200 <= r.status < 300]

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def verify(self, request: Received) -> Any:
        """The body, parsed, if the reference library `standardwebhooks` accepted the
        signature when the request arrived."""
        assert self.secret is not None
        assert request.refused is None, f"signature refused: {request.refused}"
        return request.verified


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver that checks signatures with SECRET; stopped after the test."""
    r = Receiver(SECRET)
    yield r
    r.stop()
