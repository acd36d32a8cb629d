"""Ollama backend: batches go to ``POST {base_url}/api/embed`` on an Ollama server.

The behaviour relied on is Ollama's own (github.com/ollama/ollama): the embed handler in
``server/routes.go`` and ``api/types.go``, the error answers in ``docs/api/errors.mdx``, the
server settings in ``envconfig/config.go``, and its issues, cited as ollama#N.

- One ``embed()`` call is one HTTP request with a list ``input``: Ollama runs the inputs one
  after another anyway (embedding models are always loaded with parallel=1), so a batch
  saves round-trips, and the whole batch fails or succeeds together (routes.go).
- Texts are cut on the client to :data:`DEFAULT_MAX_CHARS` characters, because Ollama
  v0.13.5 to at least v0.15.6 ignores ``truncate: true`` for all-minilm and answers an
  over-long input with 400 "the input length exceeds the context length" (ollama#14186).
- Vectors are checked (count, dimension, finite) and normalised again on the client: the
  server already normalises ``/api/embed`` answers (routes.go), but a proxy, an old server
  or a bug must not put a malformed vector into the store.
- Errors are classified for the worker (see :mod:`tickets.errors`): 5xx, 503 busy, timeouts
  and refused connections are retried here a few times, then raised as
  ``EmbedderUnavailable``; 400 is ``EmbeddingRejected`` and 404 ``ModelNotAvailable``, never
  retried (ref "Client implications").
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final
from urllib.parse import urlsplit

import requests

from config.settings import mask_url
from tickets.errors import (
    EmbedderProtocolError,
    EmbedderUnavailable,
    EmbeddingRejected,
    ModelNotAvailable,
    TriageError,
)
from worker.embedding.base import Vectors
from worker.embedding.http import (
    EMPTY_TEXT_STAND_IN,
    HttpEmbedder,
    RetryingClient,
    is_json,
    json_object,
    prepare_input,
    preview,
    unit_vectors,
)

logger = logging.getLogger(__name__)

#: Client-side character budget per text. all-minilm runs with ``num_ctx 256`` (its
#: Modelfile), i.e. 254 word-pieces after [CLS]/[SEP]. English ticket prose averages about 4
#: characters per word-piece, so 800 characters is about 200 word-pieces, about two thirds of
#: the context, with room for punctuation-heavy text; 1000-character chunks are
#: known to overflow all-minilm (knowledge-base-mcp-server#86). Text denser than
#: ~3 characters per word-piece (hex dumps, stack traces) can still overflow on a server with
#: the ollama#14186 bug: it then comes back as EmbeddingRejected, a per-ticket permanent
#: failure.
DEFAULT_MAX_CHARS: Final = 800

#: Attempts per call, first one included. Four attempts with the default backoff wait at
#: most ~1.75 s in total between attempts: enough to ride out a full queue (503,
#: OLLAMA_MAX_QUEUE) or a restart, short enough that the worker's own per-ticket retry
#: takes over after that.
DEFAULT_MAX_ATTEMPTS: Final = 4


class OllamaEmbedder(HttpEmbedder):
    """:class:`~worker.embedding.base.Embedder` on an Ollama server's ``/api/embed``.

    ``model_id`` is ``ollama:<model>``: Ollama's vectors differ from sentence-transformers'
    and between Ollama versions (ollama#7085, ollama#14449), so they must never share a
    collection with the local engine's.

    Empty or whitespace-only texts are embedded as a single space instead of being
    rejected: Ollama does not filter ``[""]`` out of a list and sends it to the runner
    (routes.go), while a space tokenises to the same bare ``[CLS] [SEP]`` that
    sentence-transformers embeds for an empty string. Rejecting would fail the whole batch
    the text is in (one failing input fails the request); whether an empty ticket is valid
    at all is the ticket validator's call, not the embedder's.

    Not safe to share between processes (create one per process, after fork); calls from
    several threads of one process are fine.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        timeout_s: float = 30.0,
        *,
        connect_timeout_s: float = 5.0,
        dimension: int | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 4.0,
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"Ollama URL must be http(s)://host:port, got {mask_url(base_url)!r}")
        if not model:
            raise ValueError("an Ollama model name is required")
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        if dimension is not None and dimension < 1:
            raise ValueError(f"dimension must be positive, got {dimension}")

        self.base_url = base_url.rstrip("/")
        # What messages and logs name: the URL with any password masked.
        self.where = mask_url(self.base_url)
        self.model = model
        self.model_id = f"ollama:{model}"
        # (connect, read): a dead host fails fast on connect, while the read timeout covers
        # a whole batch plus a possible model load (all-minilm loads in < 1 s).
        self._timeout = (min(connect_timeout_s, timeout_s), timeout_s)
        self._max_chars = max_chars
        self._dimension = dimension
        self._server_version: str | None = None
        self._version_logged = False
        self._lock = threading.Lock()

        self._http = RetryingClient(
            self.base_url,
            self._http_error,
            timeout=self._timeout,
            max_attempts=max_attempts,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            session=session,
        )

    # --- Embedder protocol ----------------------------------------------------------------

    def _embed(self, texts: list[str]) -> Vectors:
        inputs = [self._prepare(text) for text in texts]
        # truncate defaults to true (api/types.go); say it anyway so a server-side default
        # change cannot turn long tickets into 400s. _prepare's cut covers versions that ignore it.
        body = {"model": self.model, "input": inputs, "truncate": True}
        answer = self._request("POST", "/api/embed", body)
        return self._vectors(json_object(answer, "POST /api/embed"), len(inputs))

    def check(self) -> None:
        """Liveness (``GET /``), version, readiness (embed ``[]``), capabilities (``/api/show``).

        ``/api/embed`` with an empty list schedules and loads the model and answers
        ``{"embeddings": []}``, or 404 if the model is not pulled (routes.go): a real readiness
        probe that also warms the model. There is no ``/health`` endpoint.
        """
        live = self._request("GET", "/")
        if not live.text.startswith("Ollama is running"):
            raise EmbedderProtocolError(
                f"{self.where} answered GET / with {live.text[:80]!r}, not 'Ollama is "
                "running': TRIAGE_OLLAMA_URL does not point at an Ollama server"
            )
        version = self._fetch_version()
        with self._lock:
            first, self._version_logged = not self._version_logged, True
        if first:
            # Vectors change between Ollama versions (ollama#7085, ollama#14449): the version belongs in
            # the log next to the vectors it produced (ref "Client implications").
            logger.info("Ollama %s at %s serves model %s", version, self.where, self.model)

        ready = json_object(
            self._request("POST", "/api/embed", {"model": self.model, "input": []}),
            "POST /api/embed",
        )
        if ready.get("embeddings") != []:
            raise EmbedderProtocolError(
                f"{self.where}: POST /api/embed with input [] should answer "
                f"'embeddings': [], got {preview(ready)}"
            )
        self._inspect_model()

    def model_digest(self) -> str | None:
        """The digest of the model the server has under this tag (``GET /api/tags``), or
        None when the server does not list it.

        A tag is a name, not a model: ``ollama pull`` or ``ollama create`` can put another
        model under the same tag, whose vectors mean nothing next to the stored ones. The
        vector store records the digest with its collection and refuses another one.
        """
        answer = json_object(self._request("GET", "/api/tags"), "GET /api/tags")
        models = answer.get("models")
        if not isinstance(models, list):
            raise EmbedderProtocolError(
                f"{self.where}/api/tags: no 'models' list in {preview(answer)}"
            )
        wanted = {self.model, _with_tag(self.model)}
        for entry in models:
            if not isinstance(entry, dict):
                continue
            if {entry.get("name"), entry.get("model")} & wanted:
                digest = entry.get("digest")
                return digest if isinstance(digest, str) and digest else None
        return None

    def describe(self) -> dict[str, str]:
        """Never raises: an unreachable server shows as ``unavailable (<reason>)``."""
        try:
            version = self._server_version or self._fetch_version()
        except TriageError as exc:
            version = f"unavailable ({exc})"
        try:
            dimension = str(self.dimension)
        except TriageError as exc:
            dimension = f"unknown ({exc})"
        return {
            "engine": "ollama",
            "model_id": self.model_id,
            "url": self.where,
            "model": self.model,
            "server_version": version,
            "dimension": dimension,
            "max_chars": str(self._max_chars),
        }

    # --- input ----------------------------------------------------------------------------

    def _prepare(self, text: str) -> str:
        """Collapse whitespace, stand in for empty text, cut to the character budget."""
        return prepare_input(text, self._max_chars)

    # --- answer validation ----------------------------------------------------------------

    def _vectors(self, answer: dict[str, Any], expected: int) -> Vectors:
        where = f"{self.where}/api/embed"
        rows = answer.get("embeddings")
        if not isinstance(rows, list):
            raise EmbedderProtocolError(f"{where}: no 'embeddings' list in {preview(answer)}")
        # A wrong count is e.g. 'embeddings': [] for a non-empty input when a proxy or an old
        # server dropped the field (ollama#7105); [null] came from gemma3 on 0.6.0
        # (ollama#9739); servers before v0.14.0 could emit NaN (ollama#12921).
        unit = unit_vectors(rows, expected, self._dimension, where)
        if self._dimension is None:
            width = unit.shape[1]
            with self._lock:
                self._dimension = width
            logger.info("Ollama model %s: %s dimensions (from its first answer)", self.model, width)
        return unit

    # --- discovery ------------------------------------------------------------------------

    def _discover_dimension(self) -> int:
        """``/api/show`` ``model_info["<arch>.embedding_length"]``, else embed a probe text."""
        width = _embedding_length(self._show())
        if width is None:
            # /api/show without model_info (old servers) or unparsable: measure instead.
            self.embed(["dimension probe"])
        elif self._dimension is None:
            with self._lock:
                self._dimension = width
            logger.info("Ollama model %s: %s dimensions (from /api/show)", self.model, width)
        if self._dimension is None:  # pragma: no cover - embed() sets it or raises
            raise EmbedderProtocolError(f"{self.where}: could not learn the vector size")
        return self._dimension

    def _show(self) -> dict[str, Any] | None:
        """``POST /api/show``; None when the server cannot say (not fatal: it is optional)."""
        # "name" for servers that predate the "model" field; unknown fields are ignored.
        try:
            shown = self._request("POST", "/api/show", {"model": self.model, "name": self.model})
            return json_object(shown, "POST /api/show")
        except (EmbedderProtocolError, EmbeddingRejected) as exc:
            logger.debug("POST %s/api/show unusable: %s", self.where, exc)
            return None

    def _inspect_model(self) -> None:
        """Refuse a model that cannot embed; learn the dimension while we are at it.

        ``/api/embed`` does not check capabilities, so a chat model fails only when the
        runner runs (routes.go); ``/api/show`` lists ``capabilities`` since 2025-04.
        """
        shown = self._show()
        if shown is None:
            return
        capabilities = shown.get("capabilities")
        if isinstance(capabilities, list) and "embedding" not in capabilities:
            raise ModelNotAvailable(
                f"Ollama model {self.model!r} at {self.where} is not an embedding model "
                f"(capabilities: {capabilities}); set TRIAGE_OLLAMA_MODEL to one, e.g. all-minilm"
            )
        width = _embedding_length(shown)
        if self._dimension is None and width is not None:
            with self._lock:
                self._dimension = width

    def _fetch_version(self) -> str:
        answer = json_object(self._request("GET", "/api/version"), "GET /api/version")
        version = answer.get("version")
        if not isinstance(version, str):
            raise EmbedderProtocolError(
                f"{self.where}/api/version: no 'version' string in {preview(answer)}"
            )
        self._server_version = version
        return version

    # --- HTTP -----------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> requests.Response:
        """One call with retries of 5xx, 503 busy (OLLAMA_MAX_QUEUE full),
        timeouts and refused connections; returns a 2xx response or raises."""
        return self._http.request(method, path, body)

    def _http_error(self, what: str, response: requests.Response) -> TriageError:
        status = response.status_code
        message = _server_message(response)
        detail = f"{what}: HTTP {status}: {message}"
        if status == 404:
            if is_json(response):
                # {"error":"model \"x\" not found, try pulling it first"}
                # (docs/api/errors.mdx).
                return ModelNotAvailable(
                    f"{detail}. The model is not pulled on that server: run "
                    f"`ollama pull {self.model}` there"
                )
            # text/plain "404 page not found": the route does not exist, so the URL
            # is not an Ollama root, or the server predates /api/embed (added in v0.3.0).
            return ModelNotAvailable(
                f"{detail}. TRIAGE_OLLAMA_URL must be the Ollama root (e.g. "
                "http://127.0.0.1:11434) of a server new enough to have /api/embed"
            )
        if "does not support embeddings" in message:
            # A chat model: 501, or 500 before v0.13.3 (docs/api/errors.mdx). Retrying cannot
            # fix it.
            return ModelNotAvailable(
                f"{detail}. Set TRIAGE_OLLAMA_MODEL to an embedding model, e.g. all-minilm"
            )
        if status == 400:
            if "context length" in message:
                # Permanent for this text (never worth a retry); the whole batch fails with it.
                return EmbeddingRejected(
                    f"{detail} (text already cut to {self._max_chars} characters; the "
                    "server did not truncate, see ollama#14186)"
                )
            return EmbeddingRejected(detail)
        # 5xx and 503 busy (retried by _request); other 4xx (403 Host not allowed, 405, a
        # proxy's 413) are neither the text's fault nor fixed by an immediate retry: they
        # stay transient, so the worker's slower per-ticket retries give an operator time.
        return EmbedderUnavailable(detail)


def _embedding_length(shown: dict[str, Any] | None) -> int | None:
    """``model_info["<general.architecture>.embedding_length"]``, e.g. bert.embedding_length 384."""
    info = (shown or {}).get("model_info")
    if not isinstance(info, dict):
        return None
    arch = info.get("general.architecture")
    keys = [f"{arch}.embedding_length"] if isinstance(arch, str) else []
    keys += [k for k in info if isinstance(k, str) and k.endswith(".embedding_length")]
    for key in keys:
        value = info.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _server_message(response: requests.Response) -> str:
    """The server's ``{"error": ...}`` text, else the start of whatever body came back."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return str(answer["error"])
    text = response.text.strip()
    return text[:200] if text else response.reason or "(empty body)"


__all__ = ["DEFAULT_MAX_CHARS", "EMPTY_TEXT_STAND_IN", "OllamaEmbedder"]


def _with_tag(model: str) -> str:
    """``all-minilm`` is ``all-minilm:latest`` (a name without a tag means ``latest``)."""
    return model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
