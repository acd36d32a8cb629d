"""The vector index: Chroma, embedded (one owning process) or a `chroma run` server.

Measured facts this module is built around (chromadb 1.5.9; Chroma's docs warn against
several clients on one persistent path, https://docs.trychroma.com/):

- Two processes on one PersistentClient path silently lose vectors (9 of 9 runs), so the
  embedded store is guarded by an exclusive file lock: a second process gets StoreLocked
  with the fix in the message, instead of corrupting the index.
- ``add`` ignores existing ids: only ``upsert`` is used.
- ``get_or_create_collection`` silently keeps an old distance space and old metadata, so
  the space, model id and dimension are read back and checked on every open.
- ``where`` filters cost 100-300 ms per query at 100k: used only when matching is scoped
  (TRIAGE_MATCH_SCOPE=queue or source), and then outside the decision lock.
- The default embedding function downloads a model on first use: it is never attached
  (``embedding_function=None``); vectors always come from our own embedder.

The index is derived data: SQL holds every ticket, so it can be rebuilt from there.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from tickets.errors import ModelMismatch, StoreLocked, StoreUnavailable
from tickets.model import TicketKey
from worker.embedding import Embedder, Vectors

if TYPE_CHECKING:
    from config.settings import Settings

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Collection metadata: the digest of the model behind a tag (worker/embedding/ollama.py).
MODEL_DIGEST = "model_digest"
# Collection metadata: every vector's metadata holds its ticket's queue (TRIAGE_MATCH_SCOPE
# =queue filters on it); collections created before it was written lack it.
QUEUE_METADATA = "queue_metadata"
# Vectors kept in memory for fetch(): ≈ 1.6 KB each with metadata, so ≈ 160 MB at most.
FETCH_CACHE_SIZE = 100_000
# chromadb rejects larger write batches ("Batch size of 6000 is greater than max batch size of 5461").
MAX_WRITE_BATCH = 5000


@dataclass(frozen=True)
class Neighbour:
    key: TicketKey
    score: float  # cosine similarity = 1 - cosine distance
    canonical: TicketKey
    route: str
    # False for a ticket the model could not read (coverage guard): never offered as a match.
    readable: bool = True
    # Its fused dense + BM25 score when hybrid ranking placed it (worker/hybrid.py): only
    # comparable with the other candidates of the same ticket; None under cosine ranking.
    fused: float | None = None


class VectorStore:
    """A Chroma collection of ticket vectors, checked to hold this model's vectors."""

    def __init__(
        self,
        client: Any,
        collection: Any,
        *,
        location: str,
        lock: IO[str] | None,
        cache_size: int = FETCH_CACHE_SIZE,
    ):
        self._client = client
        self._collection = collection
        self.location = location
        self._lock = lock
        # Vectors this process wrote or fetched, by key: hybrid ranking fetches the vectors
        # of BM25-only candidates every batch, and a Chroma `get` costs ≈ 0.8 ms per ticket
        # (docs/quality.md). A key's vector and metadata never change within a collection
        # (decisions are final; a repair re-stores the same), so nothing goes stale; a
        # re-index opens another VectorStore.
        self._cache: OrderedDict[TicketKey, tuple[np.ndarray, Neighbour]] = OrderedDict()
        self._cache_size = cache_size

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        *,
        model_id: str,
        dimension: int,
        collection: str,
        path: Path | None = None,
        url: str | None = None,
        recipe: str = "",
        digest: str | None = None,
    ) -> VectorStore:
        """``digest``: the model's own digest where the backend has one (Ollama's, for a
        tag): recorded with a new collection, and a collection recorded with another one
        is refused like another model."""
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False)
        lock: IO[str] | None = None
        try:
            if url:
                parsed = urlparse(url)
                client = chromadb.HttpClient(
                    host=parsed.hostname or "127.0.0.1",
                    port=parsed.port or 8000,
                    ssl=parsed.scheme == "https",
                    settings=chroma_settings,
                )
                location = url
            else:
                assert path is not None, "either a Chroma path or a Chroma URL is needed"
                path.mkdir(parents=True, exist_ok=True)
                lock = _lock_store(path)
                client = chromadb.PersistentClient(path=str(path), settings=chroma_settings)
                location = str(path.resolve())
            col = client.get_or_create_collection(
                collection,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={
                    "model_id": model_id,
                    "dimension": dimension,
                    "distance": "cosine",
                    "schema_version": SCHEMA_VERSION,
                    "recipe": recipe,
                    QUEUE_METADATA: True,
                    **({MODEL_DIGEST: digest} if digest else {}),
                },
                embedding_function=None,
            )
        except (StoreLocked, ModelMismatch):
            raise
        except Exception as exc:  # chromadb raises httpx / its own errors: classify here
            if lock is not None:
                lock.close()
            raise StoreUnavailable(f"cannot open Chroma at {url or path}: {exc}") from exc
        store = cls(client, col, location=location, lock=lock)
        try:
            store._verify(model_id=model_id, dimension=dimension, recipe=recipe, digest=digest)
        except ModelMismatch:
            store.close()
            raise
        return store

    @property
    def has_queue_metadata(self) -> bool:
        """Whether every vector here carries its ticket's queue (see QUEUE_METADATA)."""
        return bool((self._collection.metadata or {}).get(QUEUE_METADATA))

    @property
    def model_digest(self) -> str | None:
        """The model digest recorded with the collection (None: not recorded)."""
        value = (self._collection.metadata or {}).get(MODEL_DIGEST)
        return str(value) if value else None

    def _verify(
        self, *, model_id: str, dimension: int, recipe: str = "", digest: str | None = None
    ) -> None:
        col = self._collection
        space = (col.configuration or {}).get("hnsw", {}).get("space")
        meta = col.metadata or {}
        problems = []
        recorded = meta.get(MODEL_DIGEST)
        if digest and recorded and recorded != digest:
            problems.append(
                f"{model_id!r} digest {_short(str(recorded))} (the name now stands for "
                f"{_short(digest)}: another model was pulled or served under it)"
            )
        if space != "cosine":
            problems.append(f"distance {space!r} (needs 'cosine')")
        if meta.get("model_id") != model_id:
            problems.append(f"model {meta.get('model_id')!r}")
        if meta.get("dimension") != dimension:
            problems.append(f"dimension {meta.get('dimension')!r}")
        if meta.get("recipe", "") != recipe:
            # Same model, other text preparation (e.g. TRIAGE_SUBJECT_WEIGHT): not comparable either.
            problems.append(
                f"embedding recipe {meta.get('recipe', '')!r} (this worker: {recipe!r})"
            )
        if digest and not recorded and not problems and meta.get("model_id") == model_id:
            # A collection from before digests were recorded: its vectors are this tag's
            # as far as anyone knows; from now on the tag must keep this digest.
            self._guard(col.modify, metadata={**meta, MODEL_DIGEST: digest})
            logger.info("collection %s: recorded model digest %s", col.name, _short(digest))
        elif recorded and not digest:
            logger.warning(
                "collection %s records model digest %s, but the embedder reports none: "
                "cannot check that the tag still names that model",
                col.name,
                _short(str(recorded)),
            )
        if problems:
            raise ModelMismatch(
                f"Chroma collection {col.name!r} at {self.location} was built with "
                f"{', '.join(problems)}; this worker embeds with {model_id!r} "
                f"(dimension {dimension}, cosine). Vectors of different models are not "
                "comparable: run `triage reindex` to re-embed every stored ticket with this "
                "model into a new collection (it switches over when complete), or switch "
                "back to the collection's model."
            )

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # --- reads and writes --------------------------------------------------------------------

    def count(self) -> int:
        return int(self._guard(self._collection.count))

    def present(self, keys: Sequence[TicketKey]) -> set[TicketKey]:
        """Which of these keys already have a vector (one call)."""
        if not keys:
            return set()
        got = self._guard(self._collection.get, ids=[k.as_id() for k in keys], include=[])
        return {TicketKey.from_id(i) for i in got["ids"]}

    def query(
        self, vectors: Vectors, k: int, where: dict[str, Any] | None = None
    ) -> list[list[Neighbour]]:
        """Nearest stored tickets for each vector, best first: one call for the batch;
        ``where``: only those whose metadata has these values (a match scope)."""
        if len(vectors) == 0:
            return []
        res = self._guard(
            self._collection.query,
            query_embeddings=np.asarray(vectors, dtype=np.float32),
            n_results=k,
            include=["distances", "metadatas"],
            **({"where": where} if where else {}),
        )
        return [
            [
                _neighbour(id_, float(1.0 - dist), meta)
                for id_, dist, meta in zip(ids, dists, metas, strict=True)
            ]
            for ids, dists, metas in zip(
                res["ids"], res["distances"], res["metadatas"], strict=True
            )
        ]

    def fetch(
        self, keys: Sequence[TicketKey], *, remember: bool = True
    ) -> dict[TicketKey, tuple[np.ndarray, Neighbour]]:
        """The stored vector and metadata of each key that has one (one call).

        For candidates found by another route than this store's nearest-neighbour search
        (hybrid ranking's lexical side): the caller computes their cosine itself; the
        Neighbour's score is a placeholder 0. ``remember=False``: not kept in the cache
        (a one-off pass over the whole collection).
        """
        out = {k: hit for k in keys if (hit := self._cache.get(k)) is not None}
        for key in out:
            self._cache.move_to_end(key)
        missing = [k for k in keys if k not in out]
        if not missing:
            return out
        got = self._guard(
            self._collection.get,
            ids=[k.as_id() for k in missing],
            include=["embeddings", "metadatas"],
        )
        for id_, vector, meta in zip(got["ids"], got["embeddings"], got["metadatas"], strict=True):
            key = TicketKey.from_id(id_)
            out[key] = (np.asarray(vector, dtype=np.float32), _neighbour(id_, 0.0, meta))
            if remember:
                self._remember(key, out[key])
        return out

    def _remember(self, key: TicketKey, entry: tuple[np.ndarray, Neighbour]) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def upsert(
        self, keys: Sequence[TicketKey], vectors: Vectors, metadatas: Sequence[dict[str, Any]]
    ) -> None:
        for start in range(0, len(keys), MAX_WRITE_BATCH):
            end = start + MAX_WRITE_BATCH
            self._guard(
                self._collection.upsert,
                ids=[k.as_id() for k in keys[start:end]],
                embeddings=np.asarray(vectors[start:end], dtype=np.float32),
                metadatas=list(metadatas[start:end]),
            )
        for key, vector, meta in zip(keys, vectors, metadatas, strict=True):
            entry = (np.asarray(vector, dtype=np.float32), _neighbour(key.as_id(), 0.0, meta))
            self._remember(key, entry)

    def delete(self, keys: Sequence[TicketKey]) -> None:
        """Remove these keys' vectors (purged tickets); keys without one are ignored."""
        for start in range(0, len(keys), MAX_WRITE_BATCH):
            ids = [k.as_id() for k in keys[start : start + MAX_WRITE_BATCH]]
            self._guard(self._collection.delete, ids=ids)
        self.forget(keys)

    def forget(self, keys: Sequence[TicketKey]) -> None:
        """Drop these keys from this process's fetch cache."""
        for key in keys:
            self._cache.pop(key, None)

    @property
    def collection_name(self) -> str:
        return str(self._collection.name)

    def describe(self) -> dict[str, str]:
        import chromadb

        return {
            "chroma": f"chromadb {chromadb.__version__}",
            "location": self.location,
            "collection": str(self._collection.name),
            "vectors": str(self.count()),
            "model_id": str((self._collection.metadata or {}).get("model_id")),
        }

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise StoreUnavailable(
                f"Chroma {fn.__name__} failed at {self.location}: {exc}"
            ) from exc


def _neighbour(id_: str, score: float, meta: dict[str, Any] | None) -> Neighbour:
    key = TicketKey.from_id(id_)
    meta = meta or {}
    canonical = TicketKey(
        str(meta.get("canonical_source", key.source)),
        str(meta.get("canonical_ticket_id", key.ticket_id)),
    )
    route = str(meta.get("route", "manual"))
    readable = bool(meta.get("readable", True))
    return Neighbour(key, score, canonical, route, readable)


def _lock_store(path: Path) -> IO[str]:
    """Take the embedded store's exclusive lock for this process's lifetime."""
    lock_path = path / ".triage-owner.lock"
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise StoreLocked(
            f"the embedded Chroma store at {path} is already open in another process "
            f"(pid {owner}). Two processes on one embedded store silently lose vectors. "
            "Stop the other process, or run `chroma run --path "
            f"{path}` and set TRIAGE_CHROMA_URL so that every process uses the server."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def open_store(
    settings: Settings, embedder: Embedder, collection: str | None = None
) -> VectorStore:
    """The configured store (server if TRIAGE_CHROMA_URL is set, else embedded), checked
    to hold this embedder's vectors. ``collection`` defaults to TRIAGE_CHROMA_COLLECTION;
    callers with a database pass the active one (see worker/reindex.py)."""
    return VectorStore.open(
        model_id=embedder.model_id,
        dimension=embedder.dimension,
        collection=collection or settings.chroma_collection,
        path=settings.chroma_path,
        url=settings.chroma_url,
        recipe=";".join(
            part
            for part in (
                f"subject_weight={settings.subject_weight:g}",
                getattr(embedder, "recipe", ""),
            )
            if part
        ),
        digest=embedder_digest(embedder),
    )


def _short(digest: str) -> str:
    """A content hash (Ollama's hex digest) cut to 12 digits; any other digest whole."""
    value = digest.removeprefix("sha256:")
    if len(value) >= 32 and all(c in "0123456789abcdef" for c in value):
        return f"{value[:12]}…"
    return digest


def embedder_digest(embedder: Embedder) -> str | None:
    """The model digest of an embedder that has one (Ollama's ``model_digest()``)."""
    digest = getattr(embedder, "model_digest", None)
    return digest() if callable(digest) else None


@contextlib.contextmanager
def opened_store(
    settings: Settings, embedder: Embedder, collection: str | None = None
) -> Iterator[VectorStore]:
    """open_store for a short-lived command: the embedded store's lock is released after."""
    store = open_store(settings, embedder, collection)
    try:
        yield store
    finally:
        store.close()
