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

    A backend may also have ``fingerprint: str``: what besides the model id decides its
    vectors (what the server reports it runs, the instruction prefix). The vector store
    records it with the collection and refuses a collection built under another one
    (read with ``getattr``; backends without it lock the model id alone).
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
