"""The one interface every embedding backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one batch per call.

    ``model_id`` names the model *and* the engine family whose vectors are comparable
    (``local:all-MiniLM-L6-v2``, ``ollama:all-minilm``): the vector store refuses a
    collection built with another id.

    A backend may also have ``model_digest() -> str | None``: what the server runs under
    the configured name (Ollama's digest, the model an OpenAI-compatible server reports),
    and ``recipe: str`` (the instruction prefix). The vector store records both with the
    collection and refuses a collection built under others (read with ``getattr``;
    backends without them lock the model id alone). ``fingerprint: str`` names the served
    model for choosing calibrated thresholds.
    """

    model_id: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Return an ``(len(texts), dimension)`` float32 array of unit vectors.

        Raises EmbedderUnavailable / EmbedderProtocolError (transient), EmbeddingRejected
        (this input can never be embedded) or ModelNotAvailable (fatal).
        """
        ...

    def describe(self) -> dict[str, str]:
        """Versions and location, for ``triage doctor`` and the worker's start-up log."""
        ...

    def check(self) -> None:
        """Readiness: raise a TriageError if the backend cannot embed right now."""
        ...
