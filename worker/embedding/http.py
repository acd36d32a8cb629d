"""What the HTTP embedding backends (Ollama, OpenAI-compatible servers) share.

- :class:`RetryingClient`: one JSON call with a few attempts, exponential backoff with jitter,
  ``Retry-After`` honoured, and every failure turned into a :mod:`tickets.errors` class by
  the backend's own ``classify`` (each server words its errors differently).
- :func:`unit_vectors`: the checks every answer passes before a vector reaches the store
  (count, dimension, numbers only, finite, non-zero), then L2 normalisation.
- :class:`HttpEmbedder`: the vector size learnt on first use, the checks on what
  ``embed()`` is given, and the lifecycle of the pooled connections.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Self

import numpy as np
import requests
from requests.adapters import HTTPAdapter

from config.settings import mask_url
from tickets.errors import (
    EmbedderProtocolError,
    EmbedderThrottled,
    EmbedderUnavailable,
    TriageError,
)
from worker.embedding.base import Vectors

logger = logging.getLogger(__name__)

# Statuses worth another attempt in the same call: server-side trouble (5xx) and the
# proxy-ish 408 / rate-limit 429.
_RETRY_STATUSES: Final = frozenset({408, 429})

#: The longest ``Retry-After`` waited out inside one call. A server asking for more is left
#: alone: the call fails as transient and the worker's per-ticket retry, whose backoff grows
#: to TRIAGE_RETRY_BACKOFF_MAX_S, comes back later, instead of a batch sleeping in a thread.
DEFAULT_RETRY_AFTER_MAX_S: Final = 10.0

#: The replacement for an empty or whitespace-only text (see :func:`prepare_input`).
EMPTY_TEXT_STAND_IN: Final = " "

# Fraction of the budget a cut may give back to end on a word boundary instead of mid-word.
_WORD_BOUNDARY_SLACK: Final = 0.2

Classify = Callable[[str, requests.Response], TriageError]


def prepare_input(text: str, max_chars: int) -> str:
    """Collapse whitespace, stand in for empty text, cut to ``max_chars`` characters.

    Whitespace runs carry no meaning for the models served (their tokenizers split on them
    and drop them), so collapsing only stops blank lines and indentation eating the budget.
    An empty text becomes a single space: servers reject ``""`` (OpenAI: "cannot be an empty
    string") or send it on unfiltered, and one failing input fails its whole batch; whether
    an empty ticket is valid at all is the ticket validator's call, not the embedder's.
    """
    if not isinstance(text, str):
        raise TypeError(f"texts must be str, got {type(text).__name__}")
    text = " ".join(text.split())
    if not text:
        return EMPTY_TEXT_STAND_IN
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    if text[max_chars] != " ":
        # End on a word boundary when one is near: a half word becomes odd word-pieces.
        space = head.rfind(" ")
        if space >= max_chars * (1 - _WORD_BOUNDARY_SLACK):
            head = head[:space]
    return head


def retryable(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUSES


def retry_after_seconds(response: requests.Response) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def reason(exc: requests.RequestException) -> str:
    """urllib3's root reason ("... [Errno 111] Connection refused") without the pool preamble."""
    wrapped = exc.args[0] if exc.args else None
    return str(getattr(wrapped, "reason", None) or exc)


def is_json(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").startswith("application/json")


def json_object(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError as exc:
        raise EmbedderProtocolError(
            f"{what} at {mask_url(response.url)}: answer is not JSON ({exc}): "
            f"{response.text[:120]!r}"
        ) from exc
    if not isinstance(answer, dict):
        raise EmbedderProtocolError(
            f"{what} at {mask_url(response.url)}: answer is not a JSON object"
        )
    return answer


def preview(answer: object) -> str:
    text = repr(answer)
    return text if len(text) <= 120 else f"{text[:117]}..."


class RetryingClient:
    """JSON over one pooled ``requests`` session, with in-call retries of transient failures.

    ``classify(what, response)`` turns a 4xx/5xx answer into an error; only an
    :class:`EmbedderUnavailable` with a retryable status (5xx, 408, 429) is tried again, and
    not an :class:`EmbedderThrottled`.
    Connection errors and timeouts are always tried again. ``headers`` go on every request
    and are never put into a message (they may hold an API key).
    """

    def __init__(
        self,
        base_url: str,
        classify: Classify,
        *,
        timeout: tuple[float, float],
        max_attempts: int,
        backoff_base_s: float,
        backoff_max_s: float,
        retry_after_max_s: float = DEFAULT_RETRY_AFTER_MAX_S,
        headers: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_base_s < 0 or backoff_max_s < 0 or retry_after_max_s < 0:
            raise ValueError("backoff values must not be negative")
        self.base_url = base_url.rstrip("/")
        # What messages and logs name: the URL with any password masked.
        self.where = mask_url(self.base_url)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self._classify = classify
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._retry_after_max_s = retry_after_max_s
        self._headers = dict(headers or {})
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # Retries are done here with backoff and classification; urllib3's own retries
            # would multiply the attempts and hide the status from us.
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        self.session = session

    def close(self) -> None:
        """Close the pooled connections; a session passed in by the caller is left open."""
        if self._owns_session:
            self.session.close()

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> requests.Response:
        """One call with up to ``max_attempts`` attempts; returns a 2xx response or raises."""
        url = f"{self.base_url}{path}"
        what = f"{method} {self.where}{path}"
        for attempt in range(1, self.max_attempts + 1):
            wait: float | None = None
            try:
                response = self.session.request(
                    method, url, json=body, timeout=self.timeout, headers=self._headers
                )
            except requests.Timeout as exc:
                # ConnectTimeout is also a ConnectionError: catch Timeout first for the message.
                error: TriageError = EmbedderUnavailable(
                    f"{what}: no answer within {self.timeout[1]:g} s ({type(exc).__name__})"
                )
                cause: BaseException | None = exc
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                error, cause = EmbedderUnavailable(f"{what}: connection failed: {reason(exc)}"), exc
            except requests.RequestException as exc:  # e.g. InvalidURL: retrying cannot help
                raise EmbedderUnavailable(f"{what}: request failed: {exc}") from exc
            else:
                if response.status_code < 400:
                    return response
                # The message carries the status and the server's own error text.
                error, cause = self._classify(what, response), None
                # A 500 can still be final (e.g. a chat model): only EmbedderUnavailable is retried.
                if isinstance(error, EmbedderThrottled) or not (
                    isinstance(error, EmbedderUnavailable) and retryable(response.status_code)
                ):
                    raise error
                wait = retry_after_seconds(response)
                if wait is not None and wait > self._retry_after_max_s:
                    raise EmbedderThrottled(
                        f"{error} (the server asks to retry after {wait:g} s: left to the "
                        "worker's retry)"
                    )
            if attempt == self.max_attempts:
                break
            delay = self._backoff(attempt) if wait is None else wait
            logger.warning(
                "%s (attempt %s of %s); retrying in %.2f s%s",
                error,
                attempt,
                self.max_attempts,
                delay,
                " (Retry-After)" if wait is not None else "",
            )
            time.sleep(delay)
        raise EmbedderUnavailable(f"{error} (gave up after {self.max_attempts} attempts)") from (
            cause
        )

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter so that workers hit by one outage spread out."""
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class HttpEmbedder:
    """The part of :class:`~worker.embedding.base.Embedder` every HTTP backend shares; a
    backend sets ``_http`` and ``_dimension`` (None: not configured) and implements
    :meth:`_embed` and :meth:`_discover_dimension`."""

    _http: RetryingClient
    _dimension: int | None

    @property
    def dimension(self) -> int:
        """Vector size: as configured, else learnt from the server on first use."""
        known = self._dimension
        return known if known is not None else self._discover_dimension()

    @dimension.setter
    def dimension(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"dimension must be positive, got {value}")
        self._dimension = value

    def embed(self, texts: Sequence[str]) -> Vectors:
        if isinstance(texts, str):
            # A str is a Sequence[str]: without this it would be embedded character by character.
            raise TypeError("embed() takes a sequence of texts, not a single str")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._embed(list(texts))

    def _embed(self, texts: list[str]) -> Vectors:
        raise NotImplementedError

    def _discover_dimension(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Close the pooled connections; a session passed in by the caller is left open."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def unit_vectors(rows: object, expected: int, width: int | None, where: str) -> Vectors:
    """Check an answer's vectors and return them L2-normalised as float32.

    ``width`` is the known dimension (None: take the first row's, all rows must agree).
    """
    if not isinstance(rows, list):
        raise EmbedderProtocolError(f"{where}: no list of vectors in the answer")
    if len(rows) != expected:
        # Never pair vectors with the wrong tickets.
        raise EmbedderProtocolError(f"{where}: sent {expected} texts, got {len(rows)} vectors")
    for i, row in enumerate(rows):
        # bool is an int subclass, and numpy would also turn "0.5" into a number.
        if not isinstance(row, list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in row
        ):
            raise EmbedderProtocolError(f"{where}: vector {i} is not a list of numbers")
        if width is None:
            width = len(row)
        if len(row) != width or width == 0:
            raise EmbedderProtocolError(
                f"{where}: vector {i} has {len(row)} dimensions, expected {width}"
            )
    matrix = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(matrix).all():
        raise EmbedderProtocolError(f"{where}: answer contains NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise EmbedderProtocolError(f"{where}: answer contains a zero vector")
    # Normalise in float64, then store float32: the store expects unit float32 vectors.
    unit: Vectors = (matrix / norms).astype(np.float32)
    return unit


__all__ = [
    "DEFAULT_RETRY_AFTER_MAX_S",
    "EMPTY_TEXT_STAND_IN",
    "RetryingClient",
    "is_json",
    "json_object",
    "prepare_input",
    "preview",
    "reason",
    "retry_after_seconds",
    "retryable",
    "unit_vectors",
]
