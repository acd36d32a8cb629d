"""A local stand-in for OpenAI's embeddings API, answering as its API reference documents
(platform.openai.com/docs/api-reference/embeddings, .../docs/guides/error-codes), for the
cases a real local server cannot produce: a refused key, an unknown model, rate limits with
``Retry-After``, server errors, an overloaded engine.

- ``POST /v1/embeddings`` ``{"model", "input": str | [str], "encoding_format", "dimensions"}``
  → ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
  "usage": {"prompt_tokens", "total_tokens"}}``
- ``GET /v1/models`` → ``{"object": "list", "data": [{"id", "object": "model", ...}]}``
- errors: ``{"error": {"message", "type", "param", "code"}}``; 401 ``invalid_api_key``
  (a missing key: code null), 404 ``model_not_found``, 400 for an empty string, more than
  ``max_inputs`` inputs or (``strict``) an unknown field such as ``input_type``; another
  path → 404.

The server machinery (faults queued with :meth:`push`, recorded requests) is the Ollama
stand-in's; only the routes differ. Vectors are deterministic per text, as there.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from tests.ollama_fake import JSON, FakeOllama, Fault

EMBEDDINGS = "/v1/embeddings"
KNOWN_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}
    ).encode()


def rate_limited(retry_after: str | None = "1") -> Fault:
    """429 as OpenAI sends it when requests per minute are exceeded."""
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    body = error_body(
        "Rate limit reached for text-embedding-3-small in organization org-test on requests "
        "per min (RPM): Limit 3000, Used 3000, Requested 1. Please try again in 20ms.",
        "requests",
        "rate_limit_exceeded",
    )
    return Fault(status=429, body=body, headers=headers, path=EMBEDDINGS)


def quota_exhausted() -> Fault:
    body = error_body(
        "You exceeded your current quota, please check your plan and billing details.",
        "insufficient_quota",
        "insufficient_quota",
    )
    return Fault(status=429, body=body, path=EMBEDDINGS)


def server_error() -> Fault:
    body = error_body(
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    )
    return Fault(status=500, body=body, path=EMBEDDINGS)


def overloaded() -> Fault:
    body = error_body(
        "The engine is currently overloaded, please try again later.", "server_error", None
    )
    return Fault(status=503, body=body, path=EMBEDDINGS)


def reorder() -> Fault:
    """The same vectors, listed in reverse order (each keeps its ``index``)."""

    def change(answer: dict[str, Any]) -> dict[str, Any]:
        return {**answer, "data": list(reversed(answer["data"]))}

    return Fault(transform=change, path=EMBEDDINGS)


def drop_last() -> Fault:
    def change(answer: dict[str, Any]) -> dict[str, Any]:
        return {**answer, "data": answer["data"][:-1]}

    return Fault(transform=change, path=EMBEDDINGS)


class FakeOpenAI(FakeOllama):
    """A threaded HTTP server on 127.0.0.1:<free port> speaking OpenAI's embeddings API."""

    def __init__(
        self,
        *,
        api_key: str | None = "sk-test-0123456789abcdef",
        models: Iterable[str] = ("text-embedding-3-small",),
        dimension: int = 384,
        max_inputs: int = 2048,
        strict: bool = True,
        echo_key: bool = False,
    ) -> None:
        super().__init__(models=(), dimension=dimension)
        self.api_key = api_key
        self.openai_models = set(models)
        self.max_inputs = max_inputs
        #: OpenAI answers 400 to request fields it does not know (e.g. input_type).
        self.strict = strict
        #: Quote the presented key whole in the 401 message (a careless proxy).
        self.echo_key = echo_key

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def embedding_calls(self) -> list[Any]:
        return [r.body for r in self.calls(EMBEDDINGS, "POST")]

    def route(
        self, method: str, path: str, raw: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        routes: dict[str, tuple[str, Callable[[bytes, str | None], tuple[int, Any]]]] = {
            EMBEDDINGS: ("POST", self._embeddings),
            "/v1/models": ("GET", self._models),
        }
        if path not in routes or routes[path][0] != method:
            message = f"Invalid URL ({method} {path})"
            return 404, JSON, error_body(message, "invalid_request_error", None)
        status, payload = routes[path][1](raw, (headers or {}).get("authorization"))
        return status, JSON, payload if isinstance(payload, bytes) else json.dumps(payload).encode()

    def _auth_error(self, given: str | None) -> bytes | None:
        if self.api_key is None:
            return None
        if not given or not given.startswith("Bearer "):
            return error_body(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
        key = given.removeprefix("Bearer ")
        if key != self.api_key:
            shown = key if self.echo_key else f"{key[:3]}*****{key[-4:]}"
            return error_body(
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        return None

    def _models(self, raw: bytes, authorization: str | None) -> tuple[int, Any]:
        problem = self._auth_error(authorization)
        if problem is not None:
            return 401, problem
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "system"}
            for m in self.openai_models
        ]
        return 200, {"object": "list", "data": data}

    def _embeddings(self, raw: bytes, authorization: str | None) -> tuple[int, Any]:
        problem = self._auth_error(authorization)
        if problem is not None:
            return 401, problem
        try:
            request = json.loads(raw or b"null")
        except ValueError:
            return 400, error_body(
                "We could not parse the JSON body of your request.", "invalid_request_error", None
            )
        if not isinstance(request, dict):
            return 400, error_body("Invalid body", "invalid_request_error", None)
        unknown = sorted(set(request) - KNOWN_FIELDS)
        if self.strict and unknown:
            return 400, error_body(
                f"Unrecognized request argument supplied: {unknown[0]}",
                "invalid_request_error",
                None,
            )
        model = request.get("model")
        if model not in self.openai_models:
            return 404, error_body(
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        given = request.get("input")
        inputs = [given] if isinstance(given, str) else given
        if (
            not isinstance(inputs, list)
            or not inputs
            or len(inputs) > self.max_inputs
            or not all(isinstance(t, str) and t for t in inputs)
        ):
            return 400, error_body(
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
                "invalid_request_error",
                None,
            )
        width = request.get("dimensions") or self.dimension
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": [float(x) for x in self.vector_for(text)[:width]],
            }
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(t.split()) + 1 for t in inputs)
        return 200, {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
