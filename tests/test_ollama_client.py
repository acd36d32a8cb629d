"""OllamaEmbedder against a real HTTP server that answers like Ollama (tests/ollama_fake.py).

No mocks: every test goes through requests, a socket and http.server. The first section
checks the fake itself against the reference (ollama-api.md), so the client tests below
exercise the server behaviour the client will really meet.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requests

from tests.ollama_fake import BUSY_MESSAGE, CONTEXT_MESSAGE, FakeOllama, Fault
from tickets.errors import (
    EmbedderProtocolError,
    EmbedderUnavailable,
    EmbeddingRejected,
    ModelNotAvailable,
    PermanentError,
    TransientError,
)
from worker.embedding.ollama import DEFAULT_MAX_CHARS, OllamaEmbedder

MakeClient = Callable[..., OllamaEmbedder]

PROSE = (
    "My laptop will not connect to the office VPN since this morning. The client says "
    "authentication failed, although my password works for email and the intranet. "
)


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        yield server


@pytest.fixture
def make_client(ollama: FakeOllama) -> Iterator[MakeClient]:
    """Clients on the ``ollama`` server with tiny backoff; all closed before the server."""
    made: list[OllamaEmbedder] = []

    def make(**kwargs: Any) -> OllamaEmbedder:
        options: dict[str, Any] = {
            "base_url": ollama.url,
            "model": "all-minilm",
            "timeout_s": 2.0,
            "backoff_base_s": 0.001,
            "backoff_max_s": 0.004,
        }
        client = OllamaEmbedder(**(options | kwargs))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: MakeClient) -> OllamaEmbedder:
    return make_client(dimension=384)


def free_port() -> int:
    """A port nobody listens on (bound, then released): connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def post(url: str, data: bytes | None = None, **kwargs: Any) -> requests.Response:
    with requests.Session() as session:
        return session.post(url, data=data, timeout=5, **kwargs)


# --- the fake answers as the reference records ---------------------------------------------


class TestFakeMatchesReference:
    def test_root_and_version(self, ollama: FakeOllama) -> None:
        with requests.Session() as session:
            root = session.get(ollama.url + "/", timeout=5)
            head = session.head(ollama.url + "/", timeout=5)
            version = session.get(ollama.url + "/api/version", timeout=5)
        assert (root.status_code, root.text) == (200, "Ollama is running")
        assert root.headers["Content-Type"].startswith("text/plain")
        assert head.status_code == 200
        assert version.json() == {"version": "0.15.6"}

    def test_embed_answer_shape(self, ollama: FakeOllama) -> None:
        answer = post(ollama.url + "/api/embed", json={"model": "all-minilm", "input": "hi"})
        body = answer.json()
        assert answer.status_code == 200
        assert set(body) == {
            "model",
            "embeddings",
            "total_duration",
            "load_duration",
            "prompt_eval_count",
        }
        assert len(body["embeddings"]) == 1 and len(body["embeddings"][0]) == 384
        assert np.linalg.norm(body["embeddings"][0]) == pytest.approx(1.0, abs=1e-5)

    def test_counters_can_be_omitted(self) -> None:
        with FakeOllama(include_counters=False) as server:
            body = post(server.url + "/api/embed", json={"model": "all-minilm", "input": ["a"]})
        assert set(body.json()) == {"model", "embeddings"}

    @pytest.mark.parametrize(
        ("data", "status", "error"),
        [
            (b"", 400, "missing request body"),
            (b"x", 400, "invalid character 'x' looking for beginning of value"),
            (b"{", 400, "unexpected EOF"),
            (b"{}", 404, "model '' not found"),
            (b'{"model":"all-minilm"}}', 400, "invalid character '}' after top-level value"),
            (b'{"model":"all-minilm",}', 400, "looking for beginning of object key string"),
            (b'{"model":5}', 400, "json: cannot unmarshal number into Go struct field"),
            (b'{"model":"all-minilm","input":5}', 400, "invalid input type"),
            (b'{"model":"all-minilm","input":["a",1]}', 400, "invalid input type"),
            (b'{"model":"nope","input":"a"}', 404, 'model "nope" not found, try pulling it first'),
            (b'{"model":"nope","input":[]}', 404, 'model "nope" not found, try pulling it first'),
        ],
    )
    def test_embed_validation(
        self, ollama: FakeOllama, data: bytes, status: int, error: str
    ) -> None:
        answer = post(ollama.url + "/api/embed", data)
        assert answer.status_code == status
        assert answer.headers["Content-Type"].startswith("application/json")
        assert error in answer.json()["error"]

    @pytest.mark.parametrize("given", [{"input": ""}, {"input": []}, {}])
    def test_empty_input_loads_and_answers_no_vectors(
        self, ollama: FakeOllama, given: dict[str, Any]
    ) -> None:
        answer = post(ollama.url + "/api/embed", json={"model": "all-minilm", **given})
        assert (answer.status_code, answer.json()) == (
            200,
            {"model": "all-minilm", "embeddings": []},
        )

    def test_empty_string_in_a_list_is_not_filtered(self, ollama: FakeOllama) -> None:
        answer = post(ollama.url + "/api/embed", json={"model": "all-minilm", "input": [""]})
        assert len(answer.json()["embeddings"]) == 1

    def test_too_long_input(self, ollama: FakeOllama) -> None:
        long = PROSE * 20
        cut = post(ollama.url + "/api/embed", json={"model": "all-minilm", "input": [long]})
        refused = post(
            ollama.url + "/api/embed",
            json={"model": "all-minilm", "input": [long], "truncate": False},
        )
        assert cut.status_code == 200 and cut.json()["prompt_eval_count"] == 256
        assert (refused.status_code, refused.json()) == (400, {"error": CONTEXT_MESSAGE})

    def test_unknown_path_and_wrong_method(self, ollama: FakeOllama) -> None:
        with requests.Session() as session:
            health = session.get(ollama.url + "/health", timeout=5)
            get_embed = session.get(ollama.url + "/api/embed", timeout=5)
        assert (health.status_code, health.text) == (404, "404 page not found")
        assert health.headers["Content-Type"].startswith("text/plain")
        assert get_embed.status_code == 405

    def test_faults_apply_in_order_and_requests_are_recorded(self, ollama: FakeOllama) -> None:
        ollama.push(Fault.busy())
        body = {"model": "all-minilm", "input": ["a"]}
        first, second = (post(ollama.url + "/api/embed", json=body) for _ in range(2))
        assert (first.status_code, first.json()) == (503, {"error": BUSY_MESSAGE})
        assert "try again.  maximum" in first.text  # the real text has two spaces
        assert second.status_code == 200
        assert [r.body for r in ollama.calls("/api/embed")] == [body, body]


# --- embed(): the happy path ------------------------------------------------------------------


def test_embed_single(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    vectors = client.embed([PROSE])

    assert vectors.shape == (1, 384) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(vectors[0], ollama.vector_for(PROSE.strip()), atol=1e-6)
    [call] = ollama.calls("/api/embed")
    assert call.method == "POST"
    assert call.body == {"model": "all-minilm", "input": [PROSE.strip()], "truncate": True}


def test_embed_batch_is_one_call_in_order(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    texts = ["printer jammed on floor 3", "cannot log in to VPN", "printer jammed on floor 3"]

    vectors = client.embed(texts)

    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    for row, text in zip(vectors, texts, strict=True):
        np.testing.assert_allclose(row, ollama.vector_for(text), atol=1e-6)
    np.testing.assert_array_equal(vectors[0], vectors[2])  # same text, same vector
    assert len(ollama.requests) == 1
    assert ollama.requests[0].body["input"] == texts


def test_missing_counters_are_fine(make_client: MakeClient) -> None:
    with FakeOllama(include_counters=False) as server:
        client = make_client(base_url=server.url, dimension=384)
        assert client.embed(["a", "b"]).shape == (2, 384)
        client.close()


def test_vectors_are_normalised_again_on_the_client(
    client: OllamaEmbedder, ollama: FakeOllama
) -> None:
    ollama.push(Fault.transform_rows(lambda row: [x * 7.5 for x in row]))
    vectors = client.embed(["a"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(vectors[0], ollama.vector_for("a"), atol=1e-6)


def test_empty_list_needs_no_http_call(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    vectors = client.embed([])
    assert vectors.shape == (0, 384) and vectors.dtype == np.float32
    assert ollama.requests == []


def test_empty_list_after_dimension_was_learned(
    make_client: MakeClient, ollama: FakeOllama
) -> None:
    client = make_client()  # no dimension given: the first batch teaches it, in one call
    client.embed(["a"])
    assert client.embed([]).shape == (0, 384)
    assert client.dimension == 384
    assert len(ollama.requests) == 1


def test_a_bare_string_is_refused(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    with pytest.raises(TypeError, match="not a single str"):
        client.embed("one ticket")
    assert ollama.requests == []


# --- input preparation --------------------------------------------------------------------


def test_empty_and_blank_texts_are_sent_as_one_space(
    client: OllamaEmbedder, ollama: FakeOllama
) -> None:
    vectors = client.embed(["", "  \n\t ", "real text"])
    assert vectors.shape == (3, 384)
    assert ollama.requests[0].body["input"] == [" ", " ", "real text"]


def test_whitespace_is_collapsed(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    client.embed(["  Printer\n\n\n   jammed\t again  "])
    assert ollama.requests[0].body["input"] == ["Printer jammed again"]


def test_long_text_is_cut_on_a_word_boundary(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    client.embed([PROSE * 30])
    [sent] = ollama.requests[0].body["input"]
    assert len(sent) <= DEFAULT_MAX_CHARS
    assert len(sent) > DEFAULT_MAX_CHARS * 0.8
    assert (PROSE * 30).startswith(sent)
    assert (PROSE * 30)[len(sent)] == " "  # ended between words


def test_cut_avoids_the_truncate_bug() -> None:
    """Ollama 0.13.5-0.15.6 ignore truncate:true for all-minilm (ollama#14186): cut first."""
    with (
        FakeOllama(ignore_truncate=True) as server,
        OllamaEmbedder(server.url, "all-minilm", dimension=384) as client,
    ):
        assert client.embed([PROSE * 30]).shape == (1, 384)


# --- errors that are not retried ------------------------------------------------------------


def test_model_not_pulled(make_client: MakeClient, ollama: FakeOllama) -> None:
    client = make_client(model="all-minilm:l12-v2", dimension=384)
    with pytest.raises(ModelNotAvailable) as caught:
        client.embed(["a"])
    message = str(caught.value)
    assert "ollama pull all-minilm:l12-v2" in message
    assert "HTTP 404" in message and "try pulling it first" in message
    assert len(ollama.requests) == 1


def test_model_not_pulled_hint_names_the_model() -> None:
    with (
        FakeOllama(models=()) as server,
        OllamaEmbedder(server.url, "all-minilm", dimension=384, backoff_base_s=0) as client,
    ):
        with pytest.raises(ModelNotAvailable, match=r"`ollama pull all-minilm`"):
            client.embed(["a"])
        assert len(server.requests) == 1


def test_url_that_is_not_an_ollama_root(make_client: MakeClient, ollama: FakeOllama) -> None:
    client = make_client(base_url=ollama.url + "/ollama", dimension=384)
    with pytest.raises(ModelNotAvailable, match=r"404 page not found.*TRIAGE_OLLAMA_URL"):
        client.embed(["a"])
    assert len(ollama.requests) == 1


def test_context_length_400_is_permanent_and_not_retried(make_client: MakeClient) -> None:
    with FakeOllama(ignore_truncate=True) as server:
        client = make_client(base_url=server.url, dimension=384, max_chars=100_000)
        with pytest.raises(EmbeddingRejected) as caught:
            client.embed([PROSE * 30])
        assert isinstance(caught.value, PermanentError)
        assert "HTTP 400" in str(caught.value) and CONTEXT_MESSAGE in str(caught.value)
        assert len(server.requests) == 1
        client.close()


def test_other_400_is_rejected_with_the_server_text(
    client: OllamaEmbedder, ollama: FakeOllama
) -> None:
    ollama.push(Fault.error(400, "embedding contains NaN or Inf values"))
    with pytest.raises(EmbeddingRejected, match="HTTP 400: embedding contains NaN or Inf"):
        client.embed(["a"])
    assert len(ollama.requests) == 1


def test_chat_model_is_fatal_not_retried(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    # Before v0.13.3 a generative model answered 500 "this model does not support embeddings".
    ollama.push(Fault.server_error("this model does not support embeddings"))
    with pytest.raises(ModelNotAvailable, match="TRIAGE_OLLAMA_MODEL"):
        client.embed(["a"])
    assert len(ollama.requests) == 1


# --- transient errors and retries ------------------------------------------------------------


def test_busy_then_ok_succeeds_after_one_retry(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    ollama.push(Fault.busy())
    assert client.embed(["a", "b"]).shape == (2, 384)
    assert len(ollama.calls("/api/embed")) == 2


@pytest.mark.parametrize("fault", [Fault.server_error(), Fault.bad_gateway_html(), Fault.hang_up()])
def test_server_trouble_then_ok(client: OllamaEmbedder, ollama: FakeOllama, fault: Fault) -> None:
    ollama.push(fault)
    assert client.embed(["a"]).shape == (1, 384)
    assert len(ollama.calls("/api/embed")) == 2


def test_persistent_busy_gives_up_after_the_capped_attempts(
    make_client: MakeClient, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(dimension=384, max_attempts=4)
    ollama.push(*[Fault.busy()] * 10)
    with (
        caplog.at_level(logging.WARNING, "worker.embedding.ollama"),
        pytest.raises(EmbedderUnavailable) as caught,
    ):
        client.embed(["a"])
    assert isinstance(caught.value, TransientError)
    assert "HTTP 503" in str(caught.value) and BUSY_MESSAGE in str(caught.value)
    assert "after 4 attempts" in str(caught.value)
    assert len(ollama.requests) == 4
    assert len([r for r in caplog.records if "retrying" in r.getMessage()]) == 3


def test_connection_refused(make_client: MakeClient) -> None:
    client = make_client(base_url=f"http://127.0.0.1:{free_port()}", dimension=384)
    with pytest.raises(EmbedderUnavailable, match=r"connection failed.*after 4 attempts"):
        client.embed(["a"])


def test_timeout(make_client: MakeClient, ollama: FakeOllama) -> None:
    client = make_client(dimension=384, timeout_s=0.1, max_attempts=2)
    ollama.push(Fault.slow(1.0), Fault.slow(1.0))
    with pytest.raises(EmbedderUnavailable, match=r"no answer within 0.1 s.*after 2 attempts"):
        client.embed(["a"])
    assert len(ollama.requests) == 2


def test_slow_once_then_ok(make_client: MakeClient, ollama: FakeOllama) -> None:
    client = make_client(dimension=384, timeout_s=0.1)
    ollama.push(Fault.slow(1.0))
    assert client.embed(["a"]).shape == (1, 384)
    assert len(ollama.requests) == 2


# --- malformed answers: EmbedderProtocolError, not retried in the call ---------------------------


def test_malformed_json(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    ollama.push(Fault.malformed_json())
    with pytest.raises(EmbedderProtocolError, match="not JSON"):
        client.embed(["a"])
    assert len(ollama.requests) == 1


@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_number_of_vectors(client: OllamaEmbedder, ollama: FakeOllama, delta: int) -> None:
    ollama.push(Fault.wrong_count(delta))
    with pytest.raises(EmbedderProtocolError, match=f"sent 2 texts, got {2 + delta} vectors"):
        client.embed(["a", "b"])
    assert len(ollama.requests) == 1


def test_no_vectors_for_nonempty_input(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    ollama.push(Fault.answer({"model": "all-minilm", "embeddings": []}))  # like ollama#7105
    with pytest.raises(EmbedderProtocolError, match="sent 1 texts, got 0 vectors"):
        client.embed(["a"])


def test_wrong_dimension(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    ollama.push(Fault.wrong_dimension(383))
    with pytest.raises(EmbedderProtocolError, match="383 dimensions, expected 384"):
        client.embed(["a", "b"])


def test_mixed_dimensions_even_before_the_dimension_is_known(
    make_client: MakeClient, ollama: FakeOllama
) -> None:
    client = make_client()
    ollama.push(Fault.wrong_dimension(100, only_row=1))
    with pytest.raises(EmbedderProtocolError, match="vector 1 has 100 dimensions"):
        client.embed(["a", "b"])
    assert client.dimension == 384  # a bad answer taught nothing; /api/show did
    assert [r.path for r in ollama.requests] == ["/api/embed", "/api/show"]


def test_dimension_change_between_calls(make_client: MakeClient, ollama: FakeOllama) -> None:
    client = make_client()
    client.embed(["a"])
    ollama.push(Fault.wrong_dimension(256))
    with pytest.raises(EmbedderProtocolError, match="256 dimensions, expected 384"):
        client.embed(["a"])


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"[]", id="json-list"),
        pytest.param(b'{"model":"all-minilm"}', id="no-embeddings"),
        pytest.param(b'{"embeddings":"none"}', id="embeddings-string"),
        pytest.param(b'{"embeddings":[null]}', id="null-vector"),  # gemma3, ollama#9739
        pytest.param(b'{"embeddings":[[]]}', id="empty-vector"),
        pytest.param(json.dumps({"embeddings": [["0.5"] * 384]}).encode(), id="strings"),
        pytest.param(json.dumps({"embeddings": [[True] * 384]}).encode(), id="bools"),
        pytest.param(json.dumps({"embeddings": [[0.0] * 384]}).encode(), id="zero-vector"),
        pytest.param(b'{"embeddings":[[NaN' + b",0.1" * 383 + b"]]}", id="nan"),
        pytest.param(b'{"embeddings":[[Infinity' + b",0.1" * 383 + b"]]}", id="inf"),
    ],
)
def test_garbage_answers(client: OllamaEmbedder, ollama: FakeOllama, payload: bytes) -> None:
    ollama.push(Fault.raw(payload))
    with pytest.raises(EmbedderProtocolError):
        client.embed(["a"])
    assert len(ollama.requests) == 1


# --- dimension --------------------------------------------------------------------------------


def test_dimension_from_api_show_once(make_client: MakeClient, ollama: FakeOllama) -> None:
    client = make_client()
    assert client.dimension == 384
    assert client.dimension == 384
    [call] = ollama.requests
    assert call.path == "/api/show" and call.body["model"] == "all-minilm"


def test_dimension_from_a_probe_when_show_has_no_model_info(make_client: MakeClient) -> None:
    with FakeOllama(show_model_info=False, dimension=768) as server:
        client = make_client(base_url=server.url)
        assert client.dimension == 768
        assert client.embed(["a"]).shape == (1, 768)
        assert [r.path for r in server.requests] == ["/api/show", "/api/embed", "/api/embed"]
        client.close()


def test_dimension_of_a_model_not_pulled(make_client: MakeClient) -> None:
    with FakeOllama(models=()) as server:
        client = make_client(base_url=server.url)
        with pytest.raises(ModelNotAvailable, match="ollama pull all-minilm"):
            _ = client.dimension
        client.close()


# --- check() and describe() -------------------------------------------------------------------


def test_check_probes_liveness_then_readiness(
    make_client: MakeClient, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client()
    with caplog.at_level(logging.INFO, "worker.embedding.ollama"):
        client.check()
        client.check()

    paths = [(r.method, r.path) for r in ollama.requests]
    assert paths[:4] == [
        ("GET", "/"),
        ("GET", "/api/version"),
        ("POST", "/api/embed"),
        ("POST", "/api/show"),
    ]
    assert ollama.requests[2].body == {"model": "all-minilm", "input": []}
    assert client.dimension == 384  # learned from /api/show during check()
    version_lines = [r for r in caplog.records if "0.15.6" in r.getMessage()]
    assert len(version_lines) == 1  # logged once, at the first check


def test_check_model_not_pulled() -> None:
    with FakeOllama(models=()) as server, OllamaEmbedder(server.url, "all-minilm") as client:
        with pytest.raises(ModelNotAvailable, match="ollama pull all-minilm"):
            client.check()
        assert [r.path for r in server.requests] == ["/", "/api/version", "/api/embed"]


def test_check_refuses_a_model_that_cannot_embed(make_client: MakeClient) -> None:
    with FakeOllama(models=("llama3.2",), capabilities=("completion", "tools")) as server:
        client = make_client(base_url=server.url, model="llama3.2")
        with pytest.raises(ModelNotAvailable, match="not an embedding model"):
            client.check()
        client.close()


def test_check_something_else_on_the_port(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    ollama.push(Fault(body=b'{"nanosecond heartbeat":1}', path="/"))
    with pytest.raises(EmbedderProtocolError, match="not point at an Ollama server"):
        client.check()


def test_check_server_down(make_client: MakeClient) -> None:
    client = make_client(base_url=f"http://127.0.0.1:{free_port()}", max_attempts=2)
    with pytest.raises(
        EmbedderUnavailable, match=r"GET http://127\.0\.0\.1:\d+/: connection failed: .*refused"
    ):
        client.check()


def test_describe(make_client: MakeClient, ollama: FakeOllama) -> None:
    client = make_client()
    info = client.describe()
    assert info["server_version"] == "0.15.6"
    assert info["url"] == ollama.url
    assert info["model"] == "all-minilm"
    assert info["model_id"] == "ollama:all-minilm"
    assert info["dimension"] == "384"


def test_describe_never_raises(make_client: MakeClient) -> None:
    client = make_client(base_url=f"http://127.0.0.1:{free_port()}/", max_attempts=1)
    info = client.describe()
    assert info["server_version"].startswith("unavailable (")
    assert info["dimension"].startswith("unknown (")
    assert info["url"] == client.base_url


# --- construction and lifecycle ---------------------------------------------------------------


def test_constructed_as_make_embedder_does(ollama: FakeOllama) -> None:
    client = OllamaEmbedder(base_url=ollama.url + "/", model="all-minilm", timeout_s=30.0)
    assert client.model_id == "ollama:all-minilm"
    assert client.base_url == ollama.url
    client.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "127.0.0.1:11434"},
        {"model": ""},
        {"timeout_s": 0},
        {"max_attempts": 0},
        {"dimension": 0},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    options: dict[str, Any] = {"base_url": "http://127.0.0.1:11434", "model": "all-minilm"}
    with pytest.raises(ValueError):
        OllamaEmbedder(**(options | kwargs))


def test_connections_are_pooled(client: OllamaEmbedder, ollama: FakeOllama) -> None:
    for _ in range(3):
        client.embed(["a"])
    assert len(ollama.requests) == 3
    assert ollama.connections_opened == 1


def test_close_leaves_a_callers_session_open(ollama: FakeOllama) -> None:
    with requests.Session() as session:
        client = OllamaEmbedder(ollama.url, "all-minilm", dimension=384, session=session)
        client.close()
        client.embed(["a"])  # still usable: the session belongs to the caller
        assert len(ollama.requests) == 1


def test_a_password_in_the_ollama_url_never_reaches_errors_or_logs(
    make_client: MakeClient, ollama: FakeOllama, caplog: pytest.LogCaptureFixture
) -> None:
    # A reverse proxy with basic auth in front of Ollama: the URL carries a password.
    url = ollama.url.replace("http://", "http://triage:s3cret-proxy-pass@")
    client = make_client(base_url=url)
    ollama.push(Fault(body=b'{"embeddings": "not a list"}'))
    with caplog.at_level(logging.DEBUG), pytest.raises(EmbedderProtocolError) as failed:
        client.embed(["hello"])
    assert "s3cret-proxy-pass" not in str(failed.value)
    assert "s3cret-proxy-pass" not in caplog.text
    assert "s3cret-proxy-pass" not in json.dumps(client.describe())
    with pytest.raises(ValueError) as bad:
        OllamaEmbedder(base_url="ftp://u:s3cret-proxy-pass@host:1", model="all-minilm")
    assert "s3cret-proxy-pass" not in str(bad.value)
