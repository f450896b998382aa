"""SmoothQuant (Xiao et al. 2023) for dynamic int8: move activation outliers into the weights before quantizing.

Dynamic int8 quantizes each activation tensor with one range per call. Trained transformers carry a few channels
far larger than the rest (after LayerNorm, after GELU), so that one range leaves the other channels a handful of
levels: on all-MiniLM-L6 the activations alone cost cosine 0.986 while 7-bit weights alone cost 0.997. Dividing
input channel ``c`` by ``s_c = max|x_c|^alpha / max|W_c|^(1 - alpha)`` and multiplying weight row ``c`` by it
leaves the product unchanged and balances the two ranges. ``alpha`` is searched per input tensor on a sample of
activation rows, scoring the simulated int8 product (``channel_scaling``); the division becomes one ``Mul`` before
the input's ``DynamicQuantizeLinear``.

Smoothing cannot help where one or a few channels dwarf all others (BERT's outlier dimensions): on all-MiniLM-L6
the first FFN output projection reads a GELU output whose largest channel reaches 24 where the next reaches 6, and
its int8 product sat at -27 dB with or without smoothing, costing the model's output cosine 0.996 → 0.976 alone.
Those channels leave the int8 product instead (LLM.int8(), Dettmers et al. 2022): ``s = inf`` marks a channel that
the ``Mul`` zeroes before quantization and whose weight row is multiplied in float beside it (a ``Gather`` of the
few channels and a ``[k, N]`` MatMul) — -39 dB for one channel on that projection, at the cost of a few tiny nodes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from optc.model_facts import default_opset, reader_counts
from optc.passes.channel_scaling import ActivationStats, activation_statistics, best_channel_scales

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
SCALE_RANGE = (1e-2, 1e2)  # keeps a near-zero channel or weight row from turning a scale into a blow-up
# Smoothing costs a Mul over the activation, so it is used only where int8 hurts (simulated error above -40 dB of
# the product) and it cuts that error by a fifth or more. all-MiniLM-L6's inputs sit at -22 to -34 dB; a 50 µs
# keyword spotter's at -43 to -46 dB, where three Muls took its speed-up from 1.5× to 1.4× for nothing.
REQUIRED_GAIN = 0.2
NEGLIGIBLE_ERROR = 1e-4
# A channel whose largest value is this many times the median channel's may be taken out of the int8 product, at
# most MAX_FLOAT_CHANNELS of them per input (LLM.int8() uses a threshold of 6 on magnitude; transformers carry a
# handful of such dimensions).
OUTLIER_RATIO = 4.0
MAX_FLOAT_CHANNELS = 8
FLOAT_CHANNELS_OPSET = 11  # Gather with axis -1
# Channels in float cost more than a Mul: a Gather, a thin MatMul and an Add of the two products, and the bias Add no
# longer fuses into ONNX Runtime's int8 kernel (about 20 µs per MatMul at 64 tokens on AVX2; a 33 µs wake-word
# model went from 1.23× to 1.09× fp32 with nothing gained). So they are tried only where smoothing alone misses the
# fidelity target, and then chosen only where their simulated error is half the best smoothing's or less: on
# all-MiniLM-L6 with two sets of sentences that took 31-49 channels of 20 inputs to float and cosine 0.993-0.976
# (all int8, smoothed) to 0.997-0.998, where a penalty of 4 split 0-8 channels and left 0.996 (two FFN projections
# kept in float on one set).
FLOAT_CHANNELS_PENALTY = 2.0


@dataclass(frozen=True)
class Smoothing:
    """What the smoothing search knows of one model's MatMul inputs: the weights each feeds and its activation
    statistics (one pass over the data), from which ``scales`` picks per input."""

    model: onnx.ModelProto
    weights_by_input: dict[str, list[str]]
    stats: dict[str, ActivationStats]
    weight_type: str
    per_channel: bool
    reduce_range: bool

    @property
    def has_dominant_channels(self) -> bool:
        return default_opset(self.model) >= FLOAT_CHANNELS_OPSET and any(
            len(_outlier_channels(s.max_abs)) for s in self.stats.values()
        )

    def scales(self, float_channels: bool) -> dict[str, np.ndarray]:
        """Input tensor → per-channel ``s`` for the inputs where it lowers the simulated int8 error, with ``inf``
        for channels multiplied in float when ``float_channels``: those cost nodes at run time (FLOAT_CHANNELS_PENALTY),
        so a caller asks for them only where smoothing alone misses its fidelity target."""

        def options(stats: ActivationStats, weight: np.ndarray) -> Iterable[np.ndarray]:
            x_max = np.maximum(stats.max_abs, 1e-5)
            w_max = np.maximum(np.abs(weight).max(1), 1e-5)
            smoothings = [
                np.clip(x_max**alpha / w_max ** (1 - alpha), *SCALE_RANGE).astype(np.float32) for alpha in ALPHAS
            ]
            yield from smoothings
            outliers = _outlier_channels(stats.max_abs) if float_channels else []
            for count in sorted({min(c, len(outliers)) for c in (1, 2, 4, MAX_FLOAT_CHANNELS)} - {0}):
                for base in [np.ones_like(x_max, dtype=np.float32), *smoothings]:
                    scale = base.copy()
                    scale[outliers[:count]] = np.inf
                    yield scale

        levels = 128 if self.reduce_range else 256
        weight_axis = 0 if self.per_channel else None

        def error(x: np.ndarray, weight: np.ndarray, reference: np.ndarray, scale: np.ndarray) -> float:
            in_float = np.isinf(scale)
            int8 = ~in_float
            activations = _fake_quantized(x[:, int8] / scale[int8], None, 256, symmetric=False)
            weights = _fake_quantized(weight[int8] * scale[int8, None], weight_axis, levels, self.weight_type == "int8")
            product = activations @ weights + x[:, in_float] @ weight[in_float]
            return float(np.sum((product - reference) ** 2)) * (FLOAT_CHANNELS_PENALTY if in_float.any() else 1.0)

        return best_channel_scales(
            self.model, self.weights_by_input, self.stats, options, error, REQUIRED_GAIN, NEGLIGIBLE_ERROR
        )


def smoothing(
    model: onnx.ModelProto,
    nodes: set[str],
    batches: Iterable[dict[str, np.ndarray]],
    weight_type: str,
    per_channel: bool,
    reduce_range: bool,
    workdir: Path,
) -> Smoothing:
    """The smoothing search for the inputs of the MatMuls in ``nodes``. An input is left alone when one of its
    weights is also read elsewhere: that weight is stored once, so it cannot be scaled for one reader only."""
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
    stats = activation_statistics(model, sorted(smoothable), batches, workdir) if smoothable else {}
    return Smoothing(model, smoothable, stats, weight_type, per_channel, reduce_range)


def _outlier_channels(max_abs: np.ndarray) -> np.ndarray:
    """Up to MAX_FLOAT_CHANNELS channel indices, largest first, whose largest value is OUTLIER_RATIO times the
    median channel's."""
    largest = np.argsort(-max_abs, kind="stable")[:MAX_FLOAT_CHANNELS]
    return largest[max_abs[largest] > OUTLIER_RATIO * np.median(max_abs)]


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
