"""Activation-aware weight scaling (AWQ, Lin et al. 2023) for weight-only quantization.

A few input channels of a MatMul carry far larger activations than the rest (LLMs' outlier channels); their weight
rows matter most, yet blockwise quantization gives them the same step as every other row. AWQ multiplies row ``c``
of the weight by ``s_c = mean|x_c|^alpha`` before quantizing and divides the activation by ``s`` instead, which
leaves the product unchanged but spends the precision where the activations are large. ``alpha`` is searched per
input on a sample of real activation rows (one pass over the calibration data collects them), choosing the value
whose quantized product is closest to the float one; 0 means "no scaling" and wins where scaling does not help.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from optc.measure.providers import check_options
from optc.passes.blockwise import hqq, rtn
from optc.passes.calibration import with_outputs
from optc.tensors import tensor_values
from optc.verify import session_source

if TYPE_CHECKING:
    from optc.passes.quantize_weights import Candidate, WeightOnlyConfig

ALPHAS = tuple(a / 10 for a in range(10))  # 0, 0.1, ..., 0.9
SAMPLE_ROWS = 512  # activation rows kept per input to score each alpha
SAMPLE_COLUMNS = 512  # weight columns (outputs) scored per input: the choice of alpha does not need all of them


def awq_scales(
    model: onnx.ModelProto,
    candidates: list[Candidate],
    batches: Iterable[dict[str, np.ndarray]],
    settings: WeightOnlyConfig,
    workdir: Path,
) -> dict[str, np.ndarray]:
    """Input tensor name → per-channel scale ``s`` (length K) for the inputs where scaling lowers the error."""
    inputs = sorted({c.node.input[0] for c in candidates})
    magnitudes, rows = _activation_statistics(model, inputs, batches, workdir)
    weights = {t.name: t for t in model.graph.initializer}
    scales = {}
    rng = np.random.default_rng(0)
    for name in inputs:
        if name not in rows:
            continue
        readers = [c for c in candidates if c.node.input[0] == name]
        weight = np.concatenate([tensor_values(weights[c.weight]).astype(np.float32) for c in readers], 1)
        if weight.shape[1] > SAMPLE_COLUMNS:
            weight = weight[:, np.sort(rng.choice(weight.shape[1], SAMPLE_COLUMNS, replace=False))]
        scale = _best_scale(rows[name], magnitudes[name], weight, settings)
        if scale is not None:
            scales[name] = scale
    return scales


def _best_scale(x: np.ndarray, magnitude: np.ndarray, weight: np.ndarray, settings: WeightOnlyConfig):
    reference = x @ weight
    best_error, best_scale = None, None
    for alpha in ALPHAS:
        scale = np.maximum(magnitude, 1e-8) ** alpha
        scale = (scale / np.sqrt(scale.max() * scale.min())).astype(np.float32)
        quantize = hqq if settings.algorithm == "hqq" and not settings.symmetric else rtn
        args = (
            (settings.bits, settings.block_size)
            if quantize is hqq
            else (settings.bits, settings.block_size, settings.symmetric)
        )
        dequantized = quantize(weight * scale[:, None], *args).dequantized() / scale[:, None]
        error = float(np.sum((x @ dequantized - reference) ** 2))
        if best_error is None or error < best_error:
            best_error, best_scale = error, (None if alpha == 0 else scale)
    return best_scale


def _activation_statistics(
    model: onnx.ModelProto, inputs: list[str], batches: Iterable[dict[str, np.ndarray]], workdir: Path
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per input tensor: mean |x| per channel, and up to ``SAMPLE_ROWS`` rows of x (one pass over the batches)."""
    session = ort.InferenceSession(
        session_source(with_outputs(model, inputs), workdir, "awq"), check_options(), ["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    rows: dict[str, list[np.ndarray]] = {}
    for feed in batches:
        values = session.run(inputs, {n: feed[n] for n in names})
        for name, value in zip(inputs, values, strict=True):
            if value.dtype.kind != "f" or value.ndim < 1 or not value.size:
                continue
            flat = value.reshape(-1, value.shape[-1]).astype(np.float32)
            sums[name] = sums.get(name, 0) + np.abs(flat).sum(0)
            counts[name] = counts.get(name, 0) + len(flat)
            kept = sum(len(r) for r in rows.get(name, []))
            if kept < SAMPLE_ROWS:
                rows.setdefault(name, []).append(flat[: SAMPLE_ROWS - kept])
    magnitudes = {name: sums[name] / counts[name] for name in sums}
    return magnitudes, {name: np.concatenate(chunks) for name, chunks in rows.items()}
