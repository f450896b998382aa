"""Activation-aware weight scaling (AWQ, Lin et al. 2023) for weight-only quantization.

A few input channels of a MatMul carry far larger activations than the rest (LLMs' outlier channels); their weight
rows matter most, yet blockwise quantization gives them the same step as every other row. AWQ multiplies row ``c``
of the weight by ``s_c = mean|x_c|^alpha`` before quantizing and divides the activation by ``s`` instead, which
leaves the product unchanged but spends the precision where the activations are large. ``alpha`` is searched per
input (``channel_scaling``), choosing the value whose quantized product is closest to the float one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from optc.passes.blockwise import hqq, rtn
from optc.passes.channel_scaling import ActivationStats, activation_statistics, best_channel_scales

if TYPE_CHECKING:
    from optc.passes.quantize_weights import Candidate, WeightOnlyConfig

ALPHAS = tuple(a / 10 for a in range(1, 10))  # 0.1, ..., 0.9 (0, no scaling, is always a candidate)


def awq_scales(
    model: onnx.ModelProto,
    candidates: list[Candidate],
    batches: Iterable[dict[str, np.ndarray]],
    settings: WeightOnlyConfig,
    workdir: Path,
) -> dict[str, np.ndarray]:
    """Input tensor name → per-channel scale ``s`` (length K) for the inputs where scaling lowers the error."""
    weights_by_input: dict[str, list[str]] = {}
    for candidate in candidates:
        weights_by_input.setdefault(candidate.node.input[0], []).append(candidate.weight)

    def options(stats: ActivationStats, weight: np.ndarray) -> Iterable[np.ndarray]:
        for alpha in ALPHAS:
            scale = np.maximum(stats.mean_abs, 1e-8) ** alpha
            yield (scale / np.sqrt(scale.max() * scale.min())).astype(np.float32)

    def error(x: np.ndarray, weight: np.ndarray, reference: np.ndarray, scale: np.ndarray) -> float:
        if settings.algorithm == "hqq" and not settings.symmetric:
            quantized = hqq(weight * scale[:, None], settings.bits, settings.block_size)
        else:
            quantized = rtn(weight * scale[:, None], settings.bits, settings.block_size, settings.symmetric)
        return float(np.sum((x @ (quantized.dequantized() / scale[:, None]) - reference) ** 2))

    if not weights_by_input:
        return {}
    stats = activation_statistics(model, sorted(weights_by_input), batches, workdir)
    return best_channel_scales(model, weights_by_input, stats, options, error)
