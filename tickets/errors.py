"""Every error the triage worker raises on purpose, classified by what to do about it.

::

    TriageError
    ├── TransientError            retried per ticket with backoff, capped by TRIAGE_MAX_RETRIES,
    │   │                         then dead-lettered to triage_failures with the last reason
    │   ├── EmbedderUnavailable   connection refused, timeout, HTTP 5xx / 503 busy
    │   │   └── EmbedderThrottled a pause longer than one call waits (Retry-After, quota)
    │   ├── EmbedderProtocolError malformed answer: bad JSON, wrong count, wrong dimension, NaN
    │   ├── StoreUnavailable      Chroma server or database unreachable
    │   ├── LockTimeout           the cross-worker decision lock could not be taken in time
    │   └── CollectionSwitched    `triage reindex` switched collections while a batch was ranked
    ├── PermanentError            never retried: the ticket goes to triage_failures at once
    │   ├── InvalidTicket         the message is not a valid canonical ticket
    │   └── EmbeddingRejected     the embedder refused this input (HTTP 400, tokenizer failure)
    └── FatalError                a worker cannot run at all: stop with a clear message
        ├── ConfigError           a setting's content is unusable (e.g. the thresholds file)
        ├── ModelNotAvailable     Ollama 404: the model is not pulled
        ├── ModelMismatch         the collection was built with another embedding model
        └── StoreLocked           another process owns the embedded Chroma store

Clients never raise library exceptions past their boundary: ``requests``, ``redis`` and
``chromadb`` errors are wrapped into this tree where they are caught.
"""

from __future__ import annotations


class TriageError(Exception):
    """Base of every deliberate ticket-triage error."""


class TransientError(TriageError):
    """May succeed if tried again later."""


class EmbedderUnavailable(TransientError):
    pass


class EmbedderThrottled(EmbedderUnavailable):
    """The server asks for a longer pause than a call waits: left to the per-ticket retry."""


class EmbedderProtocolError(TransientError):
    pass


class StoreUnavailable(TransientError):
    pass


class LockTimeout(TransientError):
    pass


class CollectionSwitched(TransientError):
    """The batch was ranked on a collection that is no longer the active one."""


class PermanentError(TriageError):
    """Will fail the same way every time for this ticket."""


class InvalidTicket(PermanentError):
    pass


class EmbeddingRejected(PermanentError):
    pass


class FatalError(TriageError):
    """The worker cannot do its job at all until an operator acts."""


class ConfigError(FatalError):
    pass


class ModelNotAvailable(FatalError):
    pass


class ModelMismatch(FatalError):
    pass


class StoreLocked(FatalError):
    pass
