"""A LLaMA-shaped decoder-only transformer written as an ONNX model with seeded weights, for the int4 work.

The graph is what HF Optimum / onnxruntime-genai export for ONNX Runtime, in standard ONNX ops only (opset 21):
token-embedding Gather; per layer a decomposed RMSNorm, q/k/v MatMuls with weights stored [in, out] (the layout
ORT's MatMulNBits quantizer takes), rotary embeddings from cos/sin caches gathered by ``position_ids`` with
rotate-half as Slice/Neg/Concat, grouped-query attention (K/V repeated by Unsqueeze/Expand/Reshape, as HF's
``repeat_kv``), past K/V concatenated with the new K/V, a causal + padding mask from ``attention_mask``, Softmax,
o_proj, residual Adds and a SwiGLU MLP (SiLU as Sigmoid*Mul); then a final RMSNorm and an untied lm_head.

Opset 21 because it is the first with blockwise DequantizeLinear and int4/uint4, so a QDQ 4-bit rewrite of this
model needs no opset change; ONNX Runtime 1.32 runs every op here at opset 21 on CPU.

fp16 follows an fp16 HF export: weights, activations, KV cache and logits are fp16 (onnxruntime-genai's builder and
current Optimum emit fp16 logits; callers cast), while RMSNorm's statistics and the masked Softmax run in fp32
between Casts, as HF's LlamaRMSNorm (``hidden_states.to(torch.float32)``) and eager attention
(``softmax(..., dtype=torch.float32)``) do; without that fp16 sums of squares overflow.

Weights (see ``_matrix_chunks``), chosen so int4 results on this model say something about real LLMs:
- Student-t (5 degrees of freedom) rather than normal, because trained LLM weights are heavy-tailed and a block's
  absmax, which sets its int4 step, is driven by the tail.
- each input channel of a matrix has its own lognormal scale (sigma 0.3), because trained weights vary by input
  channel, so a 4-bit block mixes large and small rows and smaller blocks pay off, as they do on real models.
- a few hidden channels (1 in 256) carry a large RMSNorm gain in every layer: the activation outlier channels of
  real LLMs. They make some weight rows matter far more than others, which is what activation-aware methods (AWQ,
  GPTQ) exploit and what plain RTN ignores. The final norm has none, so no single channel decides the logits.
- projections have std gain/sqrt(fan_in), which is ~0.02 at hidden 2048 as in LLaMA; o_proj and down_proj are
  scaled by 1/sqrt(2 * layers) so the residual stream stays near unit scale; the lm_head gain of 3 gives logits with
  a std near 3, a peaked next-token distribution like a trained model's.
Embeddings have unit scale, so the token and its context both shape the last hidden state and the next-token argmax
changes along the sequence; their channels are correlated (a decaying spectrum, ``_embedding_mix``), because GPTQ and
AWQ gain nothing over RTN on isotropic activations and real LLM activations are strongly anisotropic.

The 1b preset has 4.4 GB of fp32 weights, so nothing is held whole: each tensor is generated in chunks of rows and
appended to ``model.onnx.data`` as it is made, and the ModelProto only holds external-data references to it.
"""

from __future__ import annotations

import argparse
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 21
IR_VERSION = 10  # the IR version that goes with opset 21
ALIGN = 4096  # page-aligned offsets let ONNX Runtime memory-map each tensor
CHUNK_ELEMENTS = 1 << 22  # ~16 MB of fp32 per generated chunk bounds the builder's memory
DTYPES = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}


@dataclass(frozen=True)
class DecoderConfig:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    max_positions: int = 2048
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden % self.heads or self.heads % self.kv_heads or (self.hidden // self.heads) % 2:
            raise ValueError(f"{self}: heads must divide hidden, kv_heads divide heads, head_dim be even")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def param_count(self) -> int:
        """Weights only (the rotary cos/sin caches are buffers, not parameters)."""
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_dim
        mlp = 3 * self.hidden * self.intermediate
        per_layer = attention + mlp + 2 * self.hidden
        return 2 * self.vocab * self.hidden + self.layers * per_layer + self.hidden


PRESETS = {
    # Unit tests: ~100 K parameters, builds in well under a second. intermediate 172 is deliberately not a multiple
    # of 32, so down_proj's K exercises a last, partial quantization block.
    "tiny": DecoderConfig(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=172, vocab=512, max_positions=256),
    # Quick benches: ~57 M parameters, LLaMA-2 vocabulary, GQA ratio 4 as in LLaMA-3.
    "small": DecoderConfig(
        hidden=512, layers=8, heads=8, kv_heads=2, intermediate=1536, vocab=32000, max_positions=1024
    ),
    # LLaMA-3.2-1B's body (hidden 2048, 16 layers, 32/8 heads, MLP 8192, theta 500000) with a 32000 vocabulary and
    # an untied lm_head: ~1.10 B parameters, 4.4 GB in fp32.
    "1b": DecoderConfig(
        hidden=2048,
        layers=16,
        heads=32,
        kv_heads=8,
        intermediate=8192,
        vocab=32000,
        max_positions=4096,
        rope_theta=500000.0,
    ),
}


# ------------------------------------------------------------------------------------------------ weight values


def _rng(seed: int, name: str) -> np.random.Generator:
    """One generator per tensor, keyed by its name, so a tensor's values do not depend on build order or preset."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _student_t(rng: np.random.Generator, shape: tuple[int, ...], df: float = 5.0) -> np.ndarray:
    """Unit-variance Student-t samples in fp32 (numpy's standard_t is float64-only and slower)."""
    z = rng.standard_normal(shape, dtype=np.float32)
    chi = rng.standard_gamma(df / 2, shape, dtype=np.float32) * np.float32(2 / df)
    return z / np.sqrt(chi) * np.float32(np.sqrt((df - 2) / df))


def _matrix_chunks(
    rng: np.random.Generator, rows: int, cols: int, std: float, mix: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """A [rows, cols] matrix, a band of rows at a time: heavy-tailed values times a lognormal scale per row, and
    optionally each row times ``mix`` [cols, cols] to correlate its columns.

    Rows are input channels for the [in, out] MatMul weights (and tokens for the embedding)."""
    row_scale = rng.lognormal(0.0, 0.3, rows).astype(np.float32)
    row_scale /= np.sqrt(np.mean(row_scale**2))  # keep the requested overall std
    step = max(1, CHUNK_ELEMENTS // cols)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        chunk = _student_t(rng, (stop - start, cols))
        if mix is not None:
            chunk = chunk @ mix
        yield chunk * (row_scale[start:stop, None] * np.float32(std))


def _embedding_mix(config: DecoderConfig, seed: int) -> np.ndarray:
    """[hidden, hidden] = diag(s) @ O, O a random rotation and s^2 ~ 1/(i+1) + 0.05 scaled to mean 1.

    Embeddings drawn as z @ mix have covariance O^T diag(s^2) O: a decaying spectrum (effective rank ~hidden/8)
    spread over all channels, like trained LLM hidden states, which are far from isotropic. Calibration-based
    methods (GPTQ's Hessian, AWQ's activation statistics) only have something to exploit when activations are
    correlated; with i.i.d. embeddings GPTQ lands on RTN's answer."""
    rng = _rng(seed, "embedding_mix")
    rotation, _ = np.linalg.qr(rng.standard_normal((config.hidden, config.hidden)))
    power = 1.0 / np.arange(1, config.hidden + 1) + 0.05
    power /= power.mean()
    return (np.sqrt(power)[:, None] * rotation.T).astype(np.float32)


def outlier_channels(config: DecoderConfig, seed: int) -> np.ndarray:
    """The hidden channels that carry large RMSNorm gains in every layer (the same ones, as in real LLMs)."""
    count = max(1, config.hidden // 256)
    return np.sort(_rng(seed, "outlier_channels").choice(config.hidden, count, replace=False))


def _norm_weight(config: DecoderConfig, seed: int, name: str, outliers: bool) -> np.ndarray:
    weight = 1.0 + 0.05 * _rng(seed, name).standard_normal(config.hidden)
    if outliers:
        channels = outlier_channels(config, seed)
        # Large, but bounded so the outliers hold at most ~1/4 of the normed vector's energy, else one channel would
        # decide every q/k/v (and, in the tiny preset, the whole output).
        weight[channels] *= min(8.0, np.sqrt(config.hidden / (4 * len(channels))))
    return weight.astype(np.float32)


def _rope_caches(config: DecoderConfig) -> tuple[np.ndarray, np.ndarray]:
    """HF's rotary tables: angle = position * theta^(-2i/d), duplicated across both halves of the head."""
    inv_freq = config.rope_theta ** (-np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim)
    angles = np.outer(np.arange(config.max_positions, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles), np.sin(angles)


# ------------------------------------------------------------------------------------------------ graph writer


class _Writer:
    """Collects nodes, and streams initializers into the data file as external-data references."""

    def __init__(self, data: BinaryIO, location: str, np_dtype: type, onnx_dtype: int, seed: int) -> None:
        self.data, self.location, self.seed = data, location, seed
        self.np_dtype, self.onnx_dtype = np_dtype, onnx_dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def op(self, op_type: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attrs) -> str:
        outputs = outputs or [f"{name}_output_0"]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def const(self, name: str, value, dtype=None) -> str:
        """A small inline constant (shapes, axes, scalars), in the compute dtype unless told."""
        array = np.asarray(value, dtype=dtype or self.np_dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def stream(self, name: str, shape: tuple[int, ...], chunks: Iterator[np.ndarray]) -> str:
        """Append the chunks (C order, cast to the model dtype) to the data file; keep only a reference."""
        pad = -self.data.tell() % ALIGN
        self.data.write(b"\0" * pad)
        offset = self.data.tell()
        for chunk in chunks:
            self.data.write(np.ascontiguousarray(chunk, dtype=self.np_dtype).tobytes())
        length = self.data.tell() - offset
        expected = int(np.prod(shape)) * np.dtype(self.np_dtype).itemsize
        if length != expected:
            raise AssertionError(f"{name}: wrote {length} bytes, shape {shape} needs {expected}")
        tensor = onnx.TensorProto(name=name, data_type=self.onnx_dtype, dims=shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.location), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        self.initializers.append(tensor)
        return name

    def matrix(self, name: str, rows: int, cols: int, std: float, mix: np.ndarray | None = None) -> str:
        return self.stream(name, (rows, cols), _matrix_chunks(_rng(self.seed, name), rows, cols, std, mix))

    def vector(self, name: str, value: np.ndarray) -> str:
        return self.stream(name, value.shape, iter([value]))


# ------------------------------------------------------------------------------------------------ graph pieces


def _rms_norm(w: _Writer, x: str, prefix: str, weight: str, eps: float) -> str:
    """HF's LlamaRMSNorm decomposed: weight * x / sqrt(mean(x^2) + eps), statistics in fp32."""
    fp16 = w.onnx_dtype == TensorProto.FLOAT16
    x32 = w.op("Cast", [x], f"{prefix}/Cast", to=TensorProto.FLOAT) if fp16 else x
    square = w.op("Pow", [x32, w.const(f"{prefix}/Constant_2", 2.0, np.float32)], f"{prefix}/Pow")
    mean = w.op("ReduceMean", [square, "axes_last"], f"{prefix}/ReduceMean", keepdims=1)
    shifted = w.op("Add", [mean, w.const(f"{prefix}/eps", eps, np.float32)], f"{prefix}/Add")
    root = w.op("Sqrt", [shifted], f"{prefix}/Sqrt")
    normed = w.op("Div", [x32, root], f"{prefix}/Div")
    if fp16:
        normed = w.op("Cast", [normed], f"{prefix}/Cast_1", to=TensorProto.FLOAT16)
    return w.op("Mul", [weight, normed], f"{prefix}/Mul")


def _linear(w: _Writer, x: str, module: str, fan_in: int, fan_out: int, gain: float = 1.0) -> str:
    """x @ W with W [fan_in, fan_out]; HF module ``model.layers.0.mlp.up_proj`` gives the node name Optimum would,
    ``/model/layers.0/mlp/up_proj/MatMul``, so node-name patterns written for real exports match here too."""
    weight = w.matrix(f"{module}.weight", fan_in, fan_out, gain / np.sqrt(fan_in))
    node = "/" + re.sub(r"\.(?!\d)", "/", module) + "/MatMul"
    return w.op("MatMul", [x, weight], node)


def _split_heads(w: _Writer, x: str, prefix: str, heads: int, head_dim: int) -> str:
    """[batch, seq, heads*head_dim] -> [batch, heads, seq, head_dim]."""
    shape = w.const(f"{prefix}/shape", [0, 0, heads, head_dim], np.int64)
    x = w.op("Reshape", [x, shape], f"{prefix}/Reshape")
    return w.op("Transpose", [x], f"{prefix}/Transpose", perm=[0, 2, 1, 3])


def _rotary(w: _Writer, x: str, prefix: str, head_dim: int) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[..., d/2:], x[..., :d/2])."""
    half = head_dim // 2
    middle, end = w.const(f"{prefix}/half", [half], np.int64), w.const(f"{prefix}/end", [head_dim], np.int64)
    first = w.op("Slice", [x, "rope_zero", middle, "axes_last"], f"{prefix}/Slice")
    second = w.op("Slice", [x, middle, end, "axes_last"], f"{prefix}/Slice_1")
    rotated = w.op("Concat", [w.op("Neg", [second], f"{prefix}/Neg"), first], f"{prefix}/Concat", axis=-1)
    return w.op(
        "Add",
        [w.op("Mul", [x, "rope_cos"], f"{prefix}/Mul"), w.op("Mul", [rotated, "rope_sin"], f"{prefix}/Mul_1")],
        f"{prefix}/Add",
    )


def _repeat_kv(w: _Writer, x: str, prefix: str, config: DecoderConfig) -> str:
    """HF's repeat_kv: query head h reads key/value head h // (heads / kv_heads)."""
    repeats = config.heads // config.kv_heads
    if repeats == 1:
        return x
    x = w.op("Unsqueeze", [x, w.const(f"{prefix}/axes", [2], np.int64)], f"{prefix}/Unsqueeze")
    x = w.op("Expand", [x, w.const(f"{prefix}/expand", [1, 1, repeats, 1, 1], np.int64)], f"{prefix}/Expand")
    shape = w.const(f"{prefix}/shape", [0, config.heads, -1, config.head_dim], np.int64)
    return w.op("Reshape", [x, shape], f"{prefix}/Reshape")


def _attention(w: _Writer, x: str, layer: int, config: DecoderConfig) -> str:
    p, name = f"/model/layers.{layer}/self_attn", f"model.layers.{layer}.self_attn"
    hidden, kv_dim, d = config.hidden, config.kv_dim, config.head_dim
    q = _split_heads(w, _linear(w, x, f"{name}.q_proj", hidden, hidden), f"{p}/q", config.heads, d)
    k = _split_heads(w, _linear(w, x, f"{name}.k_proj", hidden, kv_dim), f"{p}/k", config.kv_heads, d)
    v = _split_heads(w, _linear(w, x, f"{name}.v_proj", hidden, kv_dim), f"{p}/v", config.kv_heads, d)
    q, k = _rotary(w, q, f"{p}/q_rotary", d), _rotary(w, k, f"{p}/k_rotary", d)
    past = f"past_key_values.{layer}"
    k = w.op("Concat", [f"{past}.key", k], f"{p}/Concat_k", outputs=[f"present.{layer}.key"], axis=2)
    v = w.op("Concat", [f"{past}.value", v], f"{p}/Concat_v", outputs=[f"present.{layer}.value"], axis=2)
    k, v = _repeat_kv(w, k, f"{p}/repeat_k", config), _repeat_kv(w, v, f"{p}/repeat_v", config)
    k_t = w.op("Transpose", [k], f"{p}/Transpose_k", perm=[0, 1, 3, 2])
    scores = w.op("Mul", [w.op("MatMul", [q, k_t], f"{p}/MatMul_qk"), "attn_scale"], f"{p}/Mul_scale")
    if w.onnx_dtype == TensorProto.FLOAT16:  # HF eager: softmax(..., dtype=float32)
        scores = w.op("Cast", [scores], f"{p}/Cast", to=TensorProto.FLOAT)
    probs = w.op("Softmax", [w.op("Add", [scores, "attn_bias"], f"{p}/Add_mask")], f"{p}/Softmax", axis=-1)
    if w.onnx_dtype == TensorProto.FLOAT16:
        probs = w.op("Cast", [probs], f"{p}/Cast_1", to=TensorProto.FLOAT16)
    context = w.op("Transpose", [w.op("MatMul", [probs, v], f"{p}/MatMul_v")], f"{p}/Transpose", perm=[0, 2, 1, 3])
    context = w.op("Reshape", [context, w.const(f"{p}/shape_out", [0, 0, hidden], np.int64)], f"{p}/Reshape")
    return _linear(w, context, f"{name}.o_proj", hidden, hidden, gain=1 / np.sqrt(2 * config.layers))


def _mlp(w: _Writer, x: str, layer: int, config: DecoderConfig) -> str:
    p, name = f"/model/layers.{layer}/mlp", f"model.layers.{layer}.mlp"
    gate = _linear(w, x, f"{name}.gate_proj", config.hidden, config.intermediate)
    up = _linear(w, x, f"{name}.up_proj", config.hidden, config.intermediate)
    silu = w.op("Mul", [gate, w.op("Sigmoid", [gate], f"{p}/act_fn/Sigmoid")], f"{p}/act_fn/Mul")
    hidden = w.op("Mul", [silu, up], f"{p}/Mul")
    gain = 1 / np.sqrt(2 * config.layers)
    return _linear(w, hidden, f"{name}.down_proj", config.intermediate, config.hidden, gain=gain)


def _layer(w: _Writer, h: str, layer: int, config: DecoderConfig) -> str:
    p, name = f"/model/layers.{layer}", f"model.layers.{layer}"
    for norm, block, residual in (("input_layernorm", _attention, "Add"), ("post_attention_layernorm", _mlp, "Add_1")):
        weight = w.vector(f"{name}.{norm}.weight", _norm_weight(config, w.seed, f"{name}.{norm}.weight", outliers=True))
        out = block(w, _rms_norm(w, h, f"{p}/{norm}", weight, config.rms_eps), layer, config)
        h = w.op("Add", [h, out], f"{p}/{residual}")
    return h


def _mask_bias(w: _Writer) -> None:
    """attn_bias [batch, 1, seq, total]: 0 where key j is visible to query i (j <= past + i and not padding), else a
    large negative. Kept finite and fp32 so a fully padded query row softmaxes to uniform instead of NaN."""
    p = "/model/attn_mask"
    seq = w.op("Shape", ["input_ids"], f"{p}/Shape", start=1, end=2)
    total = w.op("Shape", ["attention_mask"], f"{p}/Shape_1", start=1, end=2)
    seq, total = (w.op("Squeeze", [t, "axes_first"], f"{p}/Squeeze_{i}") for i, t in enumerate((seq, total)))
    one, zero = w.const(f"{p}/one", 1, np.int64), w.const(f"{p}/zero", 0, np.int64)
    query_pos = w.op("Range", [w.op("Sub", [total, seq], f"{p}/Sub"), total, one], f"{p}/Range")
    key_pos = w.op("Range", [zero, total, one], f"{p}/Range_1")
    query_pos = w.op("Unsqueeze", [query_pos, w.const(f"{p}/axes_1", [1], np.int64)], f"{p}/Unsqueeze")
    causal = w.op("LessOrEqual", [key_pos, query_pos], f"{p}/LessOrEqual")
    keep = w.op("Cast", ["attention_mask"], f"{p}/Cast", to=TensorProto.BOOL)
    keep = w.op("Unsqueeze", [keep, w.const(f"{p}/axes_12", [1, 2], np.int64)], f"{p}/Unsqueeze_1")
    visible = w.op("And", [causal, keep], f"{p}/And")
    neg = w.const(f"{p}/min", np.finfo(np.float32).min, np.float32)
    w.op("Where", [visible, w.const(f"{p}/zero_f", 0.0, np.float32), neg], f"{p}/Where", outputs=["attn_bias"])


def _rotary_tables(w: _Writer, config: DecoderConfig) -> None:
    """cos/sin [batch, 1, seq, head_dim] for this call's positions, shared by every layer."""
    cos, sin = _rope_caches(config)
    for table, values in (("cos", cos), ("sin", sin)):
        cache = w.vector(f"model.rotary_emb.{table}_cached", values.astype(np.float32))
        gathered = w.op("Gather", [cache, "position_ids"], f"/model/rotary_emb/Gather_{table}", axis=0)
        w.op("Unsqueeze", [gathered, "axes_second"], f"/model/rotary_emb/Unsqueeze_{table}", outputs=[f"rope_{table}"])


def _graph_body(w: _Writer, config: DecoderConfig) -> None:
    w.const("axes_first", [0], np.int64)
    w.const("axes_second", [1], np.int64)
    w.const("axes_last", [-1], np.int64)
    w.const("rope_zero", [0], np.int64)
    w.const("attn_scale", 1 / np.sqrt(config.head_dim))
    _mask_bias(w)
    _rotary_tables(w, config)
    embed = w.matrix("model.embed_tokens.weight", config.vocab, config.hidden, 1.0, _embedding_mix(config, w.seed))
    h = w.op("Gather", [embed, "input_ids"], "/model/embed_tokens/Gather", axis=0)
    for layer in range(config.layers):
        h = _layer(w, h, layer, config)
    norm = w.vector("model.norm.weight", _norm_weight(config, w.seed, "model.norm.weight", outliers=False))
    h = _rms_norm(w, h, "/model/norm", norm, config.rms_eps)
    lm_head = w.matrix("lm_head.weight", config.hidden, config.vocab, 3.0 / np.sqrt(config.hidden))
    w.op("MatMul", [h, lm_head], "/lm_head/MatMul", outputs=["logits"])


def _io(config: DecoderConfig, onnx_dtype: int) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    def kv(length: str) -> list:
        return ["batch_size", config.kv_heads, length, config.head_dim]

    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", onnx_dtype, ["batch_size", "sequence_length", config.vocab])]
    for layer in range(config.layers):
        for part in ("key", "value"):
            past, present = f"past_key_values.{layer}.{part}", f"present.{layer}.{part}"
            inputs.append(helper.make_tensor_value_info(past, onnx_dtype, kv("past_sequence_length")))
            outputs.append(helper.make_tensor_value_info(present, onnx_dtype, kv("total_sequence_length")))
    return inputs, outputs


def build_decoder(config: DecoderConfig, dtype: str, path: Path, seed: int = 0) -> Path:
    """Write ``path`` (the graph) and ``path.name + '.data'`` beside it (every weight); returns ``path``.

    Peak memory is one generated chunk plus the graph, not the weights: tensors go to the data file as made."""
    np_dtype, onnx_dtype = DTYPES[dtype]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    location = f"{path.name}.data"
    with open(path.parent / location, "wb") as data:
        w = _Writer(data, location, np_dtype, onnx_dtype, seed)
        _graph_body(w, config)
    inputs, outputs = _io(config, onnx_dtype)
    graph = helper.make_graph(w.nodes, "llama_decoder", inputs, outputs, w.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="optc-bench")
    model.ir_version = IR_VERSION
    model.doc_string = f"{config} dtype={dtype} seed={seed}"
    path.write_bytes(model.SerializeToString())
    return path


# ------------------------------------------------------------------------------------------------ feeds


def _past_names(config: DecoderConfig) -> Iterator[str]:
    for layer in range(config.layers):
        yield from (f"past_key_values.{layer}.key", f"past_key_values.{layer}.value")


def step_feeds(tokens: np.ndarray, cache: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds for ``tokens`` [batch, seq] following ``cache`` (past_key_values.* arrays): an all-ones mask over past
    and new tokens, positions continuing after the past."""
    tokens = np.asarray(tokens, dtype=np.int64)
    batch, seq = tokens.shape
    past = next(iter(cache.values())).shape[2]
    positions = np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), (batch, seq)).copy()
    mask = np.ones((batch, past + seq), dtype=np.int64)
    return {"input_ids": tokens, "attention_mask": mask, "position_ids": positions, **cache}


def empty_cache(config: DecoderConfig, batch: int, dtype: str = "fp32") -> dict[str, np.ndarray]:
    shape = (batch, config.kv_heads, 0, config.head_dim)
    return {name: np.zeros(shape, DTYPES[dtype][0]) for name in _past_names(config)}


def decoder_inputs(
    config: DecoderConfig, batch: int, seq: int, past: int, seed: int = 0, dtype: str = "fp32"
) -> dict[str, np.ndarray]:
    """Feeds with random tokens and a random past of the right scale (rotated keys and values are ~unit scale here).

    Fine for timing; for a decode step whose attention sees a real cache use ``prefill_cache``."""
    rng = np.random.default_rng(seed)
    shape = (batch, config.kv_heads, past, config.head_dim)
    np_dtype = DTYPES[dtype][0]
    cache = {name: rng.standard_normal(shape, dtype=np.float32).astype(np_dtype) for name in _past_names(config)}
    return step_feeds(rng.integers(0, config.vocab, (batch, seq)), cache)


def _session_dtype(session) -> str:
    kind = next(i.type for i in session.get_inputs() if i.name.startswith("past_key_values."))
    return "fp16" if kind == "tensor(float16)" else "fp32"


def prefill_cache(session, config: DecoderConfig, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``tokens`` [batch, seq] from an empty cache; returns the presents renamed as the next step's past."""
    tokens = np.asarray(tokens, dtype=np.int64)
    feeds = step_feeds(tokens, empty_cache(config, tokens.shape[0], _session_dtype(session)))
    names = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    presents = session.run(names, feeds)
    return {name.replace("present.", "past_key_values.", 1): value for name, value in zip(names, presents, strict=True)}


# ------------------------------------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a seeded LLaMA-shaped decoder as model.onnx + model.onnx.data")
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("dtype", choices=sorted(DTYPES))
    parser.add_argument("out", type=Path, help="folder to write model.onnx into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = PRESETS[args.preset]
    path = build_decoder(config, args.dtype, args.out / "model.onnx", args.seed)
    print(f"{path}: {config.param_count() / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
