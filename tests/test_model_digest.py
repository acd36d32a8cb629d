"""A Chroma collection is locked to the model's digest, not only its name: another model
pulled under the same Ollama tag is refused like another model (tests/ollama_fake.py lists
its models with their digests as Ollama's GET /api/tags does)."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from tests.conftest import WorkerProcess, ingest, n_rows, wait_for
from tests.ollama_fake import FakeOllama
from tickets import db
from tickets.errors import ModelMismatch, StoreUnavailable
from worker.embedding.ollama import OllamaEmbedder
from worker.pipeline import Services
from worker.routing import Thresholds
from worker.runtime import DigestWatch
from worker.store import VectorStore


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


def test_the_client_reads_the_digest_of_its_tag(fake: FakeOllama) -> None:
    digest = fake.digests["all-minilm:latest"]
    assert len(digest) == 64
    with OllamaEmbedder(fake.url, "all-minilm") as embedder:
        assert embedder.model_digest() == digest  # "all-minilm" is "all-minilm:latest"
    with OllamaEmbedder(fake.url, "all-minilm:latest") as embedder:
        assert embedder.model_digest() == digest
    with OllamaEmbedder(fake.url, "nomic-embed-text") as embedder:
        assert embedder.model_digest() is None  # not pulled: not listed
    assert [r.method for r in fake.calls("/api/tags")] == ["GET"] * 3
    assert fake.pull("all-minilm") != digest


def _open(path: Path, digest: str | None) -> VectorStore:
    return VectorStore.open(
        model_id="ollama:all-minilm", dimension=4, collection="tickets", path=path, digest=digest
    )


def test_a_collection_refuses_another_digest_under_the_same_name(tmp_path: Path) -> None:
    first = _open(tmp_path, "a" * 64)
    assert first.model_digest == "a" * 64
    first.close()
    _open(tmp_path, "a" * 64).close()  # the same model: fine
    with pytest.raises(
        ModelMismatch, match=r"digest aaaaaaaaaaaa.*another model was pulled or served"
    ):
        _open(tmp_path, "b" * 64)

    # A collection from before digests were recorded takes the first one it is opened with.
    old = VectorStore.open(
        model_id="ollama:all-minilm", dimension=4, collection="tickets", path=tmp_path / "old"
    )
    assert old.model_digest is None
    old.close()
    adopted = _open(tmp_path / "old", "c" * 64)
    assert adopted.model_digest == "c" * 64
    adopted.close()
    with pytest.raises(ModelMismatch):
        _open(tmp_path / "old", "d" * 64)


def test_a_worker_refuses_a_collection_after_its_tag_was_pulled_again(
    worker_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    fake: FakeOllama,
    tmp_path: Path,
) -> None:
    settings = worker_settings(embedder="ollama", ollama_url=fake.url)
    first = start_worker(settings)
    data = tmp_path / "one.csv"
    data.write_text("id,content\nD1,The invoice PDF download button does nothing in Firefox\n")
    ingest(settings, data)
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 1, 60, "the decision")
    first.stop()

    fake.pull("all-minilm")  # same tag, another model
    second = start_worker(settings, ready=False)
    assert second.wait_exit() == 1
    log = second.log()
    assert "another model was pulled or served" in log and "triage reindex" in log, log[-3000:]


def test_a_running_worker_stops_when_its_tag_is_pulled_again(
    fake: FakeOllama, tmp_path: Path, sqlite_url: str
) -> None:
    embedder = OllamaEmbedder(fake.url, "all-minilm")
    store = VectorStore.open(
        model_id=embedder.model_id,
        dimension=embedder.dimension,
        collection="tickets",
        path=tmp_path / "chroma",
        digest=embedder.model_digest(),
    )
    services = Services(
        embedder=embedder,
        store=store,
        engine=db.make_engine(sqlite_url),
        thresholds=Thresholds(0.85, 0.7),
        top_k=5,
    )
    watch = DigestWatch(services, interval_s=0)
    watch.check()  # the same model: nothing happens
    fake.pull("all-minilm")
    stopped: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    try:
        with pytest.raises(StoreUnavailable, match="changed"):
            watch.check()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped == [signal.SIGTERM]  # a warm shutdown, as for a collection switch
    store.close()
    embedder.close()
    services.engine.dispose()
