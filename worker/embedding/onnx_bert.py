"""Build an ONNX graph of a sentence-transformers BERT encoder straight from its weights.

Why build the graph by hand: exporting it with torch needs ≈ 1.2 GB of packages, while the
``onnx`` package alone (≈ 26 MB) can describe the same computation from the safetensors
weights. The graph uses only default-domain ops of
opset 17 (``LayerNormalization`` exists from 17 on) so any onnxruntime can run it; the
session's own optimiser fuses what it can at load time. Measured with onnxruntime 1.32 on
the packed graph below: each MatMul + bias Add on [tokens, hidden] becomes one Gemm, the
GELU one Gelu node; Add + LayerNormalization does not become SkipLayerNormalization, and
attention stays as plain MatMul / Softmax nodes.

The batch is packed: the dense layers (QKV, attention output, FFN, LayerNorms: ≈ 95 % of
the FLOPs for ticket-length texts) run on the real tokens only, as [tokens, hidden]; just
the attention itself is done per text, on a padded [batch, seq] view gathered with
``unpack_index`` and gathered back with ``pack_index``. Padding costs no dense work,
so a batch of mixed lengths costs what its real tokens cost.

The graph computes exactly what sentence-transformers does for a BERT model followed by mean
pooling and L2 normalisation:

    inputs   input_ids, position_ids          int64 [tokens]   every real token, text by text
             attention_mask                   int64 [batch, seq]
             unpack_index                     int64 [batch·seq] padded slot -> token row
                                                               (any valid row for a pad slot)
             pack_index                       int64 [tokens]   token row -> padded slot
    output   sentence_embedding               float32 [batch, hidden], unit length

Token-type ids are not an input: sentence-transformers passes all zeros for one sentence,
so row 0 of the token-type table is folded into the position table once, at build time.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from tickets.errors import ModelNotAvailable

Array = npt.NDArray[np.float32]

OPSET = 17
# IR version 8 is the one that goes with opset 17; pinning it (instead of onnx's newest default)
# keeps the model loadable by older onnxruntime builds too.
IR_VERSION = 8

# safetensors dtype name -> numpy little-endian dtype. BF16 has no numpy dtype: it is the top
# half of a float32, widened by hand in _to_float32.
_FLOAT_DTYPES: dict[str, str] = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}
_OTHER_ITEMSIZE: dict[str, int] = {
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


@dataclass(frozen=True)
class BertConfig:
    """The handful of ``config.json`` fields the graph depends on, validated up front.

    Validation matters because a wrong but loadable folder (a RoBERTa, a ``gelu_new`` model)
    would otherwise produce plausible-looking but wrong vectors.
    """

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelNotAvailable(f"cannot read model config {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelNotAvailable(f"model config {path} is not a JSON object")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "config.json") -> BertConfig:
        model_type = raw.get("model_type", "bert")
        if model_type != "bert":
            raise ModelNotAvailable(
                f"{source}: model_type {model_type!r} is not supported, only 'bert'"
            )
        act = raw.get("hidden_act", "gelu")
        if act != "gelu":
            raise ModelNotAvailable(
                f"{source}: hidden_act {act!r} is not supported, only 'gelu' (exact erf form)"
            )
        pos = raw.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ModelNotAvailable(
                f"{source}: position_embedding_type {pos!r} is not supported, only 'absolute'"
            )
        try:
            config = cls(
                hidden_size=int(raw["hidden_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            )
        except KeyError as exc:
            raise ModelNotAvailable(f"{source}: missing field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ModelNotAvailable(f"{source}: bad field value: {exc}") from exc
        if config.hidden_size % config.num_attention_heads:
            raise ModelNotAvailable(
                f"{source}: hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        return config


def read_safetensors(path: Path) -> dict[str, Array]:
    """Read every floating-point tensor of a ``.safetensors`` file as float32.

    The format is simple enough not to need the ``safetensors`` package: an 8-byte
    little-endian header length, a JSON header mapping names to dtype / shape / byte offsets
    (relative to the end of the header), then the raw little-endian data. Integer tensors
    (BERT checkpoints carry an int64 ``position_ids`` buffer) are skipped: the graph does not
    use them. F16 / BF16 weights are widened to float32 so that every op runs in float32.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelNotAvailable(f"cannot read weights {path}: {exc}") from exc

    def bad(why: str) -> ModelNotAvailable:
        return ModelNotAvailable(f"{path} is not a valid safetensors file: {why}")

    if len(data) < 8:
        raise bad("shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise bad(f"header length {header_len} exceeds the file size {len(data)}")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise bad(f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")

    base = 8 + header_len
    tensors: dict[str, Array] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"entry {name!r} is malformed ({exc})") from exc
        if not 0 <= start <= end <= len(data) - base:
            raise bad(f"tensor {name!r} lies outside the file")
        if dtype_name not in _FLOAT_DTYPES:
            if dtype_name not in _OTHER_ITEMSIZE:
                raise bad(f"tensor {name!r} has unknown dtype {dtype_name}")
            continue
        np_dtype = np.dtype(_FLOAT_DTYPES[dtype_name])
        count = math.prod(shape)
        if end - start != count * np_dtype.itemsize:
            raise bad(f"tensor {name!r}: {end - start} bytes for shape {list(shape)}")
        raw = np.frombuffer(data, dtype=np_dtype, count=count, offset=base + start)
        tensors[name] = _to_float32(raw, dtype_name).reshape(shape)
    return tensors


def _to_float32(raw: npt.NDArray[Any], dtype_name: str) -> Array:
    if dtype_name == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    # astype copies, so the result no longer pins the whole file's bytes in memory.
    return raw.astype(np.float32)


def find_prefix(weights: dict[str, Array]) -> str:
    """Return what precedes ``embeddings.word_embeddings.weight`` in the tensor names.

    sentence-transformers saves a bare ``BertModel`` (no prefix; the packaged all-MiniLM-L6-v2
    is like that), but checkpoints saved from ``BertForMaskedLM`` and friends use ``bert.``.
    """
    candidates = sorted(
        (name[: -len(_WORD_EMBEDDINGS)] for name in weights if name.endswith(_WORD_EMBEDDINGS)),
        key=len,
    )
    if not candidates:
        raise ModelNotAvailable(
            f"no tensor named '*{_WORD_EMBEDDINGS}' in the weights: not a BERT checkpoint"
        )
    return candidates[0]


class _Graph:
    """Accumulates nodes and initializers with generated unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, name: str, value: npt.NDArray[Any]) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, values: list[int]) -> str:
        return self.const(self._name("ints"), np.array(values, dtype=np.int64))

    def scalar(self, value: float) -> str:
        return self.const(self._name("scalar"), np.array(value, dtype=np.float32))

    def split(self, x: str, sizes: list[int]) -> list[str]:
        """Split the last axis (opset 13–17 form: sizes as an input, not an attribute)."""
        outputs = [self._name("split") for _ in sizes]
        self.nodes.append(
            helper.make_node(
                "Split", [x, self.ints(sizes)], outputs, name=self._name("Split"), axis=-1
            )
        )
        return outputs

    def op(self, op_type: str, inputs: list[str], *, out: str | None = None, **attrs: Any) -> str:
        output = out or self._name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [output], name=self._name(op_type), **attrs)
        )
        return output


def build_bert_onnx(config: BertConfig, weights: dict[str, Array]) -> onnx.ModelProto:
    """Describe BERT + mean pooling + L2 normalisation as an opset-17 ONNX model.

    ``weights`` are the checkpoint's float32 tensors (see :func:`read_safetensors`), named
    as in ``transformers``' ``BertModel`` with an optional prefix.
    """
    prefix = find_prefix(weights)
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = hidden // heads

    def w(name: str, shape: tuple[int, ...]) -> Array:
        full = prefix + name
        if full not in weights:
            raise ModelNotAvailable(f"the weights have no tensor {full!r}")
        tensor = weights[full]
        if tensor.shape != shape:
            raise ModelNotAvailable(
                f"tensor {full!r} has shape {list(tensor.shape)}, expected {list(shape)} "
                "from config.json"
            )
        return tensor

    def linear(g: _Graph, x: str, name: str, n_in: int, n_out: int) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out].
        weight = g.const(f"{name}.weight", w(f"{name}.weight", (n_out, n_in)).T)
        bias = g.const(f"{name}.bias", w(f"{name}.bias", (n_out,)))
        return g.op("Add", [g.op("MatMul", [x, weight]), bias])

    def layer_norm(g: _Graph, x: str, name: str) -> str:
        scale = g.const(f"{name}.weight", w(f"{name}.weight", (hidden,)))
        bias = g.const(f"{name}.bias", w(f"{name}.bias", (hidden,)))
        return g.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=config.layer_norm_eps)

    g = _Graph()

    # --- embeddings -----------------------------------------------------------------------
    vocab_size = weights[prefix + _WORD_EMBEDDINGS].shape[0]  # find_prefix saw it exists
    word_table = g.const("word_embeddings", w(_WORD_EMBEDDINGS, (vocab_size, hidden)))
    positions = w("embeddings.position_embeddings.weight", (config.max_position_embeddings, hidden))
    token_type_name = prefix + "embeddings.token_type_embeddings.weight"
    if token_type_name in weights:
        # Token-type ids are all zero for single sentences: add row 0 once, here.
        positions = positions + weights[token_type_name][0]
    position_table = g.const("position_embeddings", positions)

    # Packed: one row per real token of the whole batch, [tokens, hidden].
    x = g.op(
        "Add",
        [
            g.op("Gather", [word_table, "input_ids"]),
            g.op("Gather", [position_table, "position_ids"]),
        ],
    )
    x = layer_norm(g, x, "embeddings.LayerNorm")

    # --- additive attention mask, [batch, 1, 1, seq] ------------------------------------------
    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    # transformers adds float32's lowest value at padded keys; softmax then gives them exactly 0.
    lowest = float(np.finfo(np.float32).min)
    mask_bias = g.op("Mul", [g.op("Sub", [g.scalar(1.0), mask]), g.scalar(lowest)])
    mask_bias = g.op("Unsqueeze", [mask_bias, g.ints([1, 2])])

    split_heads = g.ints([0, 0, heads, head_dim])
    # [batch, seq] + [3·hidden]: the padded shape of a packed [tokens, 3·hidden] after unpacking.
    padded_qkv = g.op("Concat", [g.op("Shape", ["attention_mask"]), g.ints([3 * hidden])], axis=0)
    flat = g.ints([-1, hidden])
    inv_sqrt = 1.0 / math.sqrt(head_dim)

    # --- encoder layers ---------------------------------------------------------------------
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}."
        # Q, K, V as one [hidden, 3·hidden] MatMul: one larger GEMM instead of three.
        qkv_w = np.concatenate(
            [
                w(p + "attention.self.query.weight", (hidden, hidden)) * inv_sqrt,
                w(p + "attention.self.key.weight", (hidden, hidden)),
                w(p + "attention.self.value.weight", (hidden, hidden)),
            ]
        ).T
        # The 1/sqrt(head_dim) score scale is folded into the query projection.
        qkv_b = np.concatenate(
            [
                w(p + "attention.self.query.bias", (hidden,)) * inv_sqrt,
                w(p + "attention.self.key.bias", (hidden,)),
                w(p + "attention.self.value.bias", (hidden,)),
            ]
        )
        qkv = g.op(
            "Add",
            [g.op("MatMul", [x, g.const(p + "qkv.weight", qkv_w)]), g.const(p + "qkv.bias", qkv_b)],
        )
        # Attention is per text, so it alone runs padded: unpack [tokens, 3·hidden] to
        # [batch, seq, 3·hidden] (pad slots repeat a real token and are masked out as keys).
        qkv = g.op("Reshape", [g.op("Gather", [qkv, "unpack_index"], axis=0), padded_qkv])
        q, k, v = g.split(qkv, [hidden] * 3)
        q = g.op("Transpose", [g.op("Reshape", [q, split_heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, split_heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, split_heads])], perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("MatMul", [q, k]), mask_bias])
        probs = g.op("Softmax", [scores], axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        # Back to packed rows: pad slots' outputs are dropped here.
        context = g.op("Gather", [g.op("Reshape", [context, flat]), "pack_index"], axis=0)
        attn = linear(g, context, p + "attention.output.dense", hidden, hidden)
        x = layer_norm(g, g.op("Add", [attn, x]), p + "attention.output.LayerNorm")

        inner = linear(g, x, p + "intermediate.dense", hidden, config.intermediate_size)
        # Exact GELU, as BERT's "gelu": (x·0.5)·(1 + erf(x/√2)). Written with Div by √2 and
        # the 0.5 on x because that is the form onnxruntime's GeluFusion matches (measured:
        # with Mul by 1/√2 nothing fused; in this form bias Add + GELU become one BiasGelu).
        erf = g.op("Erf", [g.op("Div", [inner, g.scalar(math.sqrt(2.0))])])
        gelu = g.op("Mul", [g.op("Mul", [inner, g.scalar(0.5)]), g.op("Add", [erf, g.scalar(1.0)])])
        out = linear(g, gelu, p + "output.dense", config.intermediate_size, hidden)
        x = layer_norm(g, g.op("Add", [out, x]), p + "output.LayerNorm")

    # --- mean pooling over real tokens, then L2 normalisation ---------------------------------
    padded = g.op("Concat", [g.op("Shape", ["attention_mask"]), g.ints([hidden])], axis=0)
    x = g.op("Reshape", [g.op("Gather", [x, "unpack_index"], axis=0), padded])
    # [batch, 1, seq] @ [batch, seq, hidden] sums the unmasked token vectors in one MatMul.
    summed = g.op("MatMul", [g.op("Unsqueeze", [mask, g.ints([1])]), x])
    summed = g.op("Squeeze", [summed, g.ints([1])])
    count = g.op("ReduceSum", [mask, g.ints([1])], keepdims=1)
    # sentence-transformers clamps the token count at 1e-9 and the norm at 1e-12.
    pooled = g.op("Div", [summed, g.op("Max", [count, g.scalar(1e-9)])])
    norm = g.op("ReduceL2", [pooled], axes=[1], keepdims=1)
    g.op("Div", [pooled, g.op("Max", [norm, g.scalar(1e-12)])], out="sentence_embedding")

    graph = helper.make_graph(
        g.nodes,
        "sentence_bert",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["tokens"]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("unpack_index", TensorProto.INT64, ["batch_x_seq"]),
            helper.make_tensor_value_info("pack_index", TensorProto.INT64, ["tokens"]),
        ],
        outputs=[
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, ["batch", hidden]
            )
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ticket-triage",
        ir_version=IR_VERSION,
    )
    return model
