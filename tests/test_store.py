"""The Chroma store's guards, on real embedded Chroma."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tickets.errors import ModelMismatch, StoreLocked
from tickets.model import TicketKey
from worker.store import VectorStore

ROOT = Path(__file__).resolve().parent.parent


def _open(path: Path, model: str = "m1", dim: int = 4) -> VectorStore:
    return VectorStore.open(model_id=model, dimension=dim, collection="tickets", path=path)


def test_opening_with_another_model_is_refused(tmp_path: Path) -> None:
    _open(tmp_path).close()
    with pytest.raises(ModelMismatch) as exc:
        _open(tmp_path, model="m2")
    assert "'m1'" in str(exc.value) and "'m2'" in str(exc.value)
    assert "triage reindex" in str(exc.value)
    with pytest.raises(ModelMismatch, match="dimension"):
        _open(tmp_path, dim=8)
    _open(tmp_path).close()  # the lock was released by the refusals


def test_a_collection_with_another_distance_is_refused(tmp_path: Path) -> None:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(
        path=str(tmp_path), settings=Settings(anonymized_telemetry=False)
    )
    # Same metadata, but l2: get_or_create would silently keep it.
    client.create_collection(
        "tickets",
        configuration={"hnsw": {"space": "l2"}},
        metadata={"model_id": "m1", "dimension": 4, "distance": "cosine"},
        embedding_function=None,
    )
    with pytest.raises(ModelMismatch, match="distance 'l2'"):
        _open(tmp_path)


def test_upsert_replaces_and_query_reports_cosine_similarity(tmp_path: Path) -> None:
    store = _open(tmp_path)
    try:
        a, b = TicketKey("s", "a"), TicketKey("s", "b")
        meta = [
            {"canonical_source": "s", "canonical_ticket_id": x, "route": "manual"} for x in "ab"
        ]
        store.upsert([a, b], np.eye(4, dtype=np.float32)[:2], meta)
        store.upsert(
            [a], np.asarray([[0, 0, 1, 0]], np.float32), meta[:1]
        )  # add() would ignore this
        assert store.count() == 2
        hits = store.query(np.asarray([[0, 0, 1, 0]], np.float32), 2)[0]
        assert hits[0].key == a and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[1].key == b and hits[1].score == pytest.approx(0.0, abs=1e-5)
        assert store.present([a, TicketKey("s", "zzz")]) == {a}
    finally:
        store.close()


def test_second_process_gets_a_clear_error(tmp_path: Path) -> None:
    owner = _open(tmp_path)
    try:
        code = textwrap.dedent(
            f"""
            from pathlib import Path
            from tickets.errors import StoreLocked
            from worker.store import VectorStore
            try:
                VectorStore.open(model_id="m1", dimension=4, collection="tickets", path=Path({str(tmp_path)!r}))
            except StoreLocked as exc:
                print("LOCKED:", exc)
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    finally:
        owner.close()
    assert "LOCKED:" in out.stdout, out.stderr
    assert "TRIAGE_CHROMA_URL" in out.stdout and "silently lose vectors" in out.stdout
    # and once the owner is gone, another process may open it
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "LOCKED" not in out.stdout and out.returncode == 0, out.stderr


def test_lock_is_per_process_not_per_object(tmp_path: Path) -> None:
    store = _open(tmp_path)
    try:
        with pytest.raises(StoreLocked):
            _open(tmp_path)
    finally:
        store.close()
