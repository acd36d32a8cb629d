"""A local stand-in for an Ollama server, answering as Ollama does.

Real routes and answers (github.com/ollama/ollama: server/routes.go, api/types.go,
docs/api/errors.mdx; EmbedHandler order: decode body, check the model
name, check the input type, schedule the model (404 if not pulled), answer ``[]`` for empty
input, then embed):

- ``GET``/``HEAD /`` → 200 text/plain ``Ollama is running``
- ``GET``/``HEAD /api/version`` → ``{"version": ...}``
- ``POST /api/embed`` → ``{"model", "embeddings", "total_duration", "load_duration",
  "prompt_eval_count"}``, the three counters ``omitempty`` (``include_counters=False``
  leaves them out, as the docs' batch example does)
- ``POST /api/show`` → ``details``, ``parameters``, ``model_info`` and ``capabilities``
- ``GET``/``HEAD /api/tags`` → ``{"models": [{"name", "model", "modified_at", "size",
  "digest", "details"}]}`` for the pulled models (routes.go); :meth:`FakeOllama.pull` puts
  another model (another digest) under a tag, as ``ollama pull`` of an updated tag does
- another method on those routes → 405 ``405 method not allowed``; another path → 404
  text/plain ``404 page not found``

Vectors are fake but deterministic: 384 unit-length float32 values seeded by a hash of the
text, so the same text always gives the same vector (:meth:`FakeOllama.vector_for`).

Per test, :meth:`FakeOllama.push` queues :class:`Fault` answers for the next matching
requests, and :attr:`FakeOllama.requests` records every request (method, path, parsed body).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

import numpy as np

JSON = "application/json; charset=utf-8"
TEXT = "text/plain; charset=utf-8"

#: server/sched.go L88, with its two spaces.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
CONTEXT_MESSAGE = "the input length exceeds the context length"

Transform = Callable[[dict[str, Any]], Any]


#: all-minilm's ``details`` as /api/tags and /api/show give them.
ALL_MINILM_DETAILS: dict[str, Any] = {
    "parent_model": "",
    "format": "gguf",
    "family": "bert",
    "families": ["bert"],
    "parameter_size": "23M",
    "quantization_level": "F16",
}


@dataclass(frozen=True)
class Fault:
    """One canned answer for the next request to ``path`` (None: to any path).

    ``body`` set: answer it as is. ``transform`` set: build the normal answer, then send
    ``transform(answer)`` as JSON. Neither: the normal answer, after ``delay_s``.
    ``disconnect``: read the request, then close the connection without answering.
    """

    status: int = 200
    body: bytes | None = None
    content_type: str = JSON
    delay_s: float = 0.0
    transform: Transform | None = None
    disconnect: bool = False
    path: str | None = "/api/embed"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def error(cls, status: int, message: str, **kw: Any) -> Fault:
        """Ollama's native error shape: ``{"error": "<msg>"}`` (docs/api/errors.mdx)."""
        return cls(status=status, body=json.dumps({"error": message}).encode(), **kw)

    @classmethod
    def busy(cls) -> Fault:
        """The queue is full (OLLAMA_MAX_QUEUE): 503 at once (envconfig/config.go)."""
        return cls.error(503, BUSY_MESSAGE)

    @classmethod
    def server_error(cls, message: str = "llama runner process has terminated") -> Fault:
        return cls.error(500, message)

    @classmethod
    def bad_gateway_html(cls) -> Fault:
        """What a reverse proxy in front of Ollama says when Ollama is down."""
        return cls(status=502, body=b"<html><body>502 Bad Gateway</body></html>", content_type=TEXT)

    @classmethod
    def malformed_json(cls) -> Fault:
        return cls(body=b'{"model":"all-minilm","embeddings":[[0.1,0.2')

    @classmethod
    def raw(cls, body: bytes, status: int = 200) -> Fault:
        return cls(status=status, body=body)

    @classmethod
    def answer(cls, payload: Any, status: int = 200) -> Fault:
        """Replace the whole answer by ``payload`` (garbage that is still valid JSON)."""
        return cls(status=status, body=json.dumps(payload).encode())

    @classmethod
    def wrong_count(cls, delta: int = -1) -> Fault:
        """Drop the last vector(s) (delta < 0) or repeat the first one (delta > 0)."""

        def change(answer: dict[str, Any]) -> dict[str, Any]:
            rows = answer["embeddings"]
            rows = rows[:delta] if delta < 0 else rows + [rows[0]] * delta
            return {**answer, "embeddings": rows}

        return cls(transform=change)

    @classmethod
    def wrong_dimension(cls, dimension: int = 383, only_row: int | None = None) -> Fault:
        """Cut every vector (or only row ``only_row``) to ``dimension`` values."""

        def change(answer: dict[str, Any]) -> dict[str, Any]:
            rows = [
                row[:dimension] if only_row is None or i == only_row else row
                for i, row in enumerate(answer["embeddings"])
            ]
            return {**answer, "embeddings": rows}

        return cls(transform=change)

    @classmethod
    def transform_rows(cls, change_row: Callable[[list[float]], Any]) -> Fault:
        def change(answer: dict[str, Any]) -> dict[str, Any]:
            return {**answer, "embeddings": [change_row(row) for row in answer["embeddings"]]}

        return cls(transform=change)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        """Answer normally, but only after ``delay_s`` (longer than the client's timeout)."""
        return cls(delay_s=delay_s)

    @classmethod
    def hang_up(cls) -> Fault:
        return cls(disconnect=True)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    raw: bytes = field(repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)


class FakeOllama:
    """A threaded HTTP server on 127.0.0.1:<free port>; use as a context manager."""

    def __init__(
        self,
        *,
        models: Iterable[str] = ("all-minilm",),
        version: str = "0.15.6",
        dimension: int = 384,
        include_counters: bool = True,
        context_length: int = 256,
        ignore_truncate: bool = False,
        capabilities: Iterable[str] = ("embedding",),
        show_model_info: bool = True,
    ) -> None:
        self.models = {_full_name(m) for m in models}
        #: Tag → the digest of the model under it (sha256 hex, as /api/tags lists it).
        self.digests = {m: _digest(m) for m in self.models}
        self.version = version
        self.dimension = dimension
        self.include_counters = include_counters
        #: num_ctx of all-minilm's Modelfile; [CLS] and [SEP] count against it.
        self.context_length = context_length
        #: Emulate ollama#14186 (v0.13.5 to >= v0.15.6): truncate:true is ignored, too long → 400.
        self.ignore_truncate = ignore_truncate
        self.capabilities = list(capabilities)
        #: False: an old /api/show without model_info / capabilities.
        self.show_model_info = show_model_info

        self._faults: deque[Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connections: set[socket.socket] = set()
        #: TCP connections accepted so far: shows whether a client pools them.
        self.connections_opened = 0
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        # A short poll interval: shutdown() waits for the serve loop to notice, once per test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True
        )
        self._thread.start()

    # --- control --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def push(self, *faults: Fault) -> None:
        """Answer the next matching requests with these faults, in order."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def calls(self, path: str = "/api/embed", method: str | None = None) -> list[RecordedRequest]:
        return [
            r for r in self.requests if r.path == path and (method is None or r.method == method)
        ]

    def pull(self, model: str, content: str = "another build") -> str:
        """Put another model under tag ``model`` (``ollama pull`` of an updated tag);
        returns its digest. Vectors are not changed: only the digest tells."""
        name = _full_name(model)
        with self._lock:
            self.models.add(name)
            self.digests[name] = _digest(f"{name}\n{content}")
            return self.digests[name]

    def vector_for(self, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The unit float32 vector this server answers for ``text``."""
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        vector = np.random.default_rng(seed).standard_normal(self.dimension)
        unit: np.ndarray[Any, np.dtype[np.float32]] = (vector / np.linalg.norm(vector)).astype(
            np.float32
        )
        return unit

    def close(self) -> None:
        """Stop serving, wake delayed handlers, drop kept-alive connections, join threads."""
        self._stop.set()
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()  # joins the handler threads (daemon_threads is False)
        self._thread.join()

    def __enter__(self) -> FakeOllama:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- used by the handler --------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> Fault | None:
        with self._lock:
            self._requests.append(request)
            if self._faults and self._faults[0].path in (None, request.path):
                return self._faults.popleft()
            return None

    def _track(self, conn: socket.socket, alive: bool) -> None:
        with self._lock:
            if alive:
                self._connections.add(conn)
                self.connections_opened += 1
            else:
                self._connections.discard(conn)

    def route(
        self, method: str, path: str, raw: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        """The answer a real server gives: (status, content type, body)."""
        routes: dict[str, tuple[tuple[str, ...], Callable[[bytes], tuple[int, Any]]]] = {
            "/": (("GET", "HEAD"), lambda _: (200, "Ollama is running")),
            "/api/version": (("GET", "HEAD"), lambda _: (200, {"version": self.version})),
            "/api/embed": (("POST",), self._embed),
            "/api/show": (("POST",), self._show),
            "/api/tags": (("GET", "HEAD"), lambda _: (200, self._tags())),
        }
        if path not in routes:
            return 404, TEXT, b"404 page not found"
        methods, handler = routes[path]
        if method not in methods:
            # gin with HandleMethodNotAllowed = true (routes.go).
            return 405, TEXT, b"405 method not allowed"
        status, payload = handler(raw)
        if isinstance(payload, str):
            return status, TEXT, payload.encode()
        return status, JSON, json.dumps(payload, separators=(",", ":")).encode()

    def _embed(self, raw: bytes) -> tuple[int, Any]:
        request, problem = _decode(raw, "EmbedRequest", {"model": str, "truncate": bool})
        if problem is not None:
            return 400, {"error": problem}
        assert request is not None
        model = request.get("model", "")
        if not model:
            return 404, {"error": f"model '{model}' not found"}  # writeModelRefParseError
        given = request.get("input")
        if isinstance(given, str):
            inputs = [given] if given else []  # a bare "" is dropped, [""] is not (routes.go)
        elif isinstance(given, list):
            if not all(isinstance(item, str) for item in given):
                return 400, {"error": "invalid input type"}
            inputs = list(given)
        elif given is None:
            inputs = []
        else:
            return 400, {"error": "invalid input type"}
        if _full_name(model) not in self.models:
            # handleScheduleError (routes.go): after the input check, before the empty answer.
            return 404, {"error": f'model "{model}" not found, try pulling it first'}
        if not inputs:
            # The model is loaded by now: this is the readiness probe. No counters.
            return 200, {"model": model, "embeddings": []}

        truncate = request.get("truncate", True) is not False
        total_tokens = 0
        for text in inputs:
            tokens = _estimate_tokens(text)
            if tokens > self.context_length:
                if not truncate or self.ignore_truncate:
                    return 400, {"error": CONTEXT_MESSAGE}  # first error fails the batch
                tokens = self.context_length
            total_tokens += tokens
        answer: dict[str, Any] = {
            "model": model,
            # Go prints float32 in its shortest form (0.010071029), so does str(np.float32).
            "embeddings": [[float(str(x)) for x in self.vector_for(text)] for text in inputs],
        }
        if self.include_counters:
            answer |= {
                "total_duration": 14143917,
                "load_duration": 1019500,
                "prompt_eval_count": total_tokens,
            }
        return 200, answer

    def _tags(self) -> dict[str, Any]:
        """The pulled models as ``GET /api/tags`` lists them (a real server's answer)."""
        with self._lock:
            digests = dict(self.digests)
        return {
            "models": [
                {
                    "name": name,
                    "model": name,
                    "modified_at": "2025-07-29T09:31:19.089668004Z",
                    "size": 45960996,
                    "digest": digests[name],
                    "details": ALL_MINILM_DETAILS,
                }
                for name in sorted(digests)
            ]
        }

    def _show(self, raw: bytes) -> tuple[int, Any]:
        request, problem = _decode(raw, "ShowRequest", {"model": str, "name": str})
        if problem is not None:
            return 400, {"error": problem}
        assert request is not None
        model = request.get("model") or request.get("name")
        if not model:
            return 400, {"error": "model is required"}
        if _full_name(model) not in self.models:
            return 404, {"error": f"model '{_full_name(model)}' not found"}
        answer: dict[str, Any] = {
            "parameters": f"num_ctx                        {self.context_length}",
            "details": ALL_MINILM_DETAILS,
        }
        if self.show_model_info:
            answer["model_info"] = {
                "general.architecture": "bert",
                "bert.context_length": 512,
                "bert.embedding_length": self.dimension,
                "general.parameter_count": 22565376,
            }
            answer["capabilities"] = self.capabilities
        return 200, answer


class _Server(ThreadingHTTPServer):
    # Non-daemon handler threads, so server_close() joins them: no thread outlives a test.
    daemon_threads = False
    fake: FakeOllama

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out has closed its end; writing the late answer then fails.
        # That is the scenario under test, not a server bug: stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Go's net/http: the client pool is used
    server_version = "FakeOllama"
    timeout = 10  # a forgotten kept-alive connection cannot hold close() for long

    @property
    def fake(self) -> FakeOllama:
        return cast(_Server, self.server).fake

    def setup(self) -> None:
        super().setup()
        # Go's net/http sets TCP_NODELAY; without it the separate header and body writes
        # of http.server meet delayed ACKs and every answer stalls ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake._track(self.connection, alive=True)

    def finish(self) -> None:
        self.fake._track(self.connection, alive=False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self, head: bool = False) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        fault = self.fake._record(RecordedRequest(self.command, path, body, raw, headers))

        if fault is not None and fault.delay_s and self.fake._stop.wait(fault.delay_s):
            self.close_connection = True
            return  # the server is closing: nobody is listening any more
        if fault is not None and fault.disconnect:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return

        status, content_type, payload = self.fake.route(self.command, path, raw, headers)
        if fault is not None and fault.body is not None:
            status, content_type, payload = fault.status, fault.content_type, fault.body
        elif fault is not None and fault.transform is not None and status == 200:
            changed = fault.transform(json.loads(payload))
            status, content_type, payload = fault.status, JSON, json.dumps(changed).encode()

        self.send_response(status)
        for name, value in fault.headers if fault is not None else ():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if not head:
            self.wfile.write(payload)


def _digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def _full_name(model: str) -> str:
    """``all-minilm`` and ``all-minilm:latest`` are one model (one digest)."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"


_TOKEN = re.compile(r"\w+|[^\w\s]")


def _estimate_tokens(text: str) -> int:
    """Rough BERT count: one token per word or punctuation mark, plus [CLS] and [SEP]."""
    return len(_TOKEN.findall(text)) + 2


_GO_TYPES = {str: "string", bool: "bool"}
_JSON_KINDS = {str: "string", bool: "bool", int: "number", float: "number", list: "array"}


def _decode(
    raw: bytes, struct: str, fields: dict[str, type]
) -> tuple[dict[str, Any] | None, str | None]:
    """gin's ShouldBindJSON: (request, None) or (None, the Go error text)."""
    if not raw.strip():
        return None, "missing request body"  # io.EOF
    text = raw.decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, _go_syntax_error(text, exc)
    if value is None:
        return {}, None  # `null` decodes into a zero struct
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "object")
        return None, f"json: cannot unmarshal {kind} into Go value of type api.{struct}"
    for name, expected in fields.items():
        got = value.get(name)
        if got is not None and not isinstance(got, expected):
            kind = "object" if isinstance(got, dict) else _JSON_KINDS.get(type(got), "value")
            return None, (
                f"json: cannot unmarshal {kind} into Go struct field {struct}.{name} "
                f"of type {_GO_TYPES[expected]}"
            )
    return value, None


def _go_syntax_error(text: str, exc: json.JSONDecodeError) -> str:
    """Go encoding/json's wording for the common syntax errors, from Python's diagnosis."""
    if exc.pos >= len(text.rstrip()):
        return "unexpected EOF"
    char = text[exc.pos]
    shown = "'\\''" if char == "'" else f"'{char}'"
    if exc.msg.startswith("Extra data"):
        return f"invalid character {shown} after top-level value"
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character {shown} looking for beginning of object key string"
    if exc.msg.startswith("Expecting ':'"):
        return f"invalid character {shown} after object key"
    if exc.msg.startswith("Expecting ','"):
        opener = text[: exc.pos].rstrip()
        inside = "array element" if _innermost(opener) == "[" else "object key:value pair"
        return f"invalid character {shown} after {inside}"
    return f"invalid character {shown} looking for beginning of value"


def _innermost(prefix: str) -> str:
    """The innermost open bracket of a JSON prefix (strings skipped)."""
    stack: list[str] = []
    in_string = escaped = False
    for char in prefix:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""
