"""SmoothQuant (Xiao et al. 2023) for dynamic int8: move activation outliers into the weights before quantizing.

Dynamic int8 quantizes each activation tensor with one range per call. Trained transformers carry a few channels
far larger than the rest (after LayerNorm, after GELU), so that one range leaves the other channels a handful of
levels: on all-MiniLM-L6 the activations alone cost cosine 0.986 while 7-bit weights alone cost 0.997. Dividing
input channel ``c`` by ``s_c = max|x_c|^alpha / max|W_c|^(1 - alpha)`` and multiplying weight row ``c`` by it
leaves the product unchanged and balances the two ranges. ``alpha`` is searched per input tensor on a sample of
activation rows, scoring the simulated int8 product (``channel_scaling``); the division becomes one ``Mul`` before
the input's ``DynamicQuantizeLinear``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from optc.model_facts import reader_counts
from optc.passes.channel_scaling import ActivationStats, best_channel_scales

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SCALE_RANGE = (1e-2, 1e2)  # keeps a near-zero channel or weight row from turning a scale into a blow-up
# Smoothing costs a Mul over the activation, so it is used only where int8 hurts (simulated error above -40 dB of
# the product) and it cuts that error by a fifth or more. all-MiniLM-L6's inputs sit at -22 to -34 dB; a 50 µs
# keyword spotter's at -43 to -46 dB, where three Muls took its speed-up from 1.5× to 1.4× for nothing.
REQUIRED_GAIN = 0.2
NEGLIGIBLE_ERROR = 1e-4


def smoothing_scales(
    model: onnx.ModelProto,
    nodes: set[str],
    batches: Iterable[dict[str, np.ndarray]],
    weight_type: str,
    per_channel: bool,
    reduce_range: bool,
    workdir: Path,
) -> dict[str, np.ndarray]:
    """Input tensor → per-channel ``s`` for the inputs of the MatMuls in ``nodes`` where smoothing lowers the
    simulated int8 error. An input is left alone when one of its weights is also read elsewhere: that weight is
    stored once, so it cannot be scaled for one reader only."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    weights_by_input: dict[str, list[str]] = {}
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and node.name in nodes else None
        if weight is not None and len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT:
            weights_by_input.setdefault(node.input[0], []).append(weight.name)
    readers = reader_counts(graph)
    smoothable = {
        source: weights
        for source, weights in weights_by_input.items()
        if all(readers[w] == weights.count(w) == 1 for w in weights)
    }

    def options(stats: ActivationStats, weight: np.ndarray) -> Iterable[np.ndarray]:
        x_max = np.maximum(stats.max_abs, 1e-5)
        w_max = np.maximum(np.abs(weight).max(1), 1e-5)
        for alpha in ALPHAS:
            yield np.clip(x_max**alpha / w_max ** (1 - alpha), *SCALE_RANGE).astype(np.float32)

    levels = 128 if reduce_range else 256

    def error(x: np.ndarray, weight: np.ndarray, reference: np.ndarray, scale: np.ndarray) -> float:
        activations = _fake_quantized(x / scale, None, 256, symmetric=False)
        weights = _fake_quantized(weight * scale[:, None], 0 if per_channel else None, levels, weight_type == "int8")
        return float(np.sum((activations @ weights - reference) ** 2))

    return best_channel_scales(model, smoothable, batches, workdir, options, error, REQUIRED_GAIN, NEGLIGIBLE_ERROR)


def _fake_quantized(values: np.ndarray, axis: int | None, levels: int, symmetric: bool) -> np.ndarray:
    """``values`` through quantize → dequantize with one range per slice along ``axis`` (or one in all): symmetric
    around 0, or from min to max with 0 included, as ONNX Runtime's quantizers make them."""
    if symmetric:
        largest = levels // 2 - 1
        step = np.abs(values).max(axis=axis, keepdims=True) / largest
        step = np.where(step == 0, 1, step)
        return np.clip(np.round(values / step), -largest, largest) * step
    low = np.minimum(values.min(axis=axis, keepdims=True), 0)
    step = (np.maximum(values.max(axis=axis, keepdims=True), 0) - low) / (levels - 1)
    step = np.where(step == 0, 1, step)
    zero = np.round(-low / step)
    return (np.clip(np.round(values / step) + zero, 0, levels - 1) - zero) * step
