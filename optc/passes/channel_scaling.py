"""Per-channel scaling of a MatMul's input against its weight rows, searched on real activations.

``x @ W == (x / s) @ (s[:, None] * W)`` for any positive ``s`` over the input channels, so a quantizer may move
range between the activation and the weight wherever that lowers the quantized product's error. AWQ (weight-only)
and SmoothQuant (dynamic int8) differ only in the family of ``s`` they try and in how they quantize; both pick, per
input tensor, the candidate whose quantized product is closest to the float one on a sample of activation rows that
one pass over the data collects. "No scaling" is always a candidate, so scaling is used only where it helps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from optc.measure.providers import check_options
from optc.passes.calibration import with_outputs
from optc.tensors import tensor_values
from optc.verify import session_source

SAMPLE_ROWS = 512  # activation rows kept per input to score each candidate
SAMPLE_COLUMNS = 512  # weight columns (outputs) scored per input: the choice of ``s`` does not need all of them


@dataclass(frozen=True)
class ActivationStats:
    mean_abs: np.ndarray  # per channel, over every row seen
    max_abs: np.ndarray  # per channel, over every row seen
    rows: np.ndarray  # up to SAMPLE_ROWS rows, [rows, channels]


ScaleOptions = Callable[[ActivationStats, np.ndarray], Iterable[np.ndarray]]
# (x, weight, x @ weight, s) → how far the quantized product of x / s and s-scaled weight rows is from x @ weight
ProductError = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def best_channel_scales(
    model: onnx.ModelProto,
    weights_by_input: dict[str, list[str]],
    stats: dict[str, ActivationStats],
    options: ScaleOptions,
    error: ProductError,
    required_gain: float = 0.0,
    negligible_error: float = 0.0,
) -> dict[str, np.ndarray]:
    """Input tensor → the per-channel ``s`` among ``options`` with the least ``error`` of the product with the
    weights (initializer names) it feeds, for the inputs where that ``s`` cuts the error of no scaling by more than
    ``required_gain`` (a fraction) and that error is above ``negligible_error`` (relative to the product's energy):
    scaling may cost a node of its own. ``stats`` (from ``activation_statistics``) covers the inputs."""
    initializers = {t.name: t for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    scales = {}
    for name, weight_names in weights_by_input.items():
        if name not in stats:
            continue
        weight = np.concatenate([tensor_values(initializers[w]).astype(np.float32) for w in weight_names], 1)
        if weight.shape[1] > SAMPLE_COLUMNS:
            weight = weight[:, np.sort(rng.choice(weight.shape[1], SAMPLE_COLUMNS, replace=False))]
        x = stats[name].rows
        reference = x @ weight
        unscaled = error(x, weight, reference, np.ones(weight.shape[0], np.float32))
        if unscaled <= negligible_error * float(np.sum(reference**2)):
            continue
        best_error, best = unscaled * (1 - required_gain), None
        for scale in options(stats[name], weight):
            candidate_error = error(x, weight, reference, scale)
            if candidate_error < best_error:
                best_error, best = candidate_error, scale
        if best is not None:
            scales[name] = best
    return scales


def divided_input(
    source: str, scale: np.ndarray, dtype: np.dtype, tag: str, output: str
) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    """The ``Mul`` that divides ``source``'s channels by ``scale`` into ``output`` (node ``<source>_<tag>``), and
    its ``<source>_<tag>_inverse`` initializer: the activation side of a scaling whose weight rows are multiplied."""
    inverse = numpy_helper.from_array((1.0 / scale).astype(dtype), f"{source}_{tag}_inverse")
    return helper.make_node("Mul", [source, inverse.name], [output], name=f"{source}_{tag}"), inverse


def activation_statistics(
    model: onnx.ModelProto, inputs: list[str], batches: Iterable[dict[str, np.ndarray]], workdir: Path
) -> dict[str, ActivationStats]:
    """Per float input tensor of ``inputs``: its channel statistics and a row sample (one pass over the batches)."""
    session = ort.InferenceSession(
        session_source(with_outputs(model, inputs), workdir, "channel_scaling"),
        check_options(),
        ["CPUExecutionProvider"],
    )
    names = [i.name for i in session.get_inputs()]
    sums: dict[str, np.ndarray] = {}
    maxima: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    rows: dict[str, list[np.ndarray]] = {}
    for feed in batches:
        values = session.run(inputs, {n: feed[n] for n in names})
        for name, value in zip(inputs, values, strict=True):
            if value.dtype.kind != "f" or value.ndim < 1 or not value.size:
                continue
            flat = np.abs(value.reshape(-1, value.shape[-1]).astype(np.float32))
            sums[name] = sums.get(name, 0) + flat.sum(0)
            maxima[name] = np.maximum(maxima.get(name, 0), flat.max(0))
            counts[name] = counts.get(name, 0) + len(flat)
            kept = sum(len(r) for r in rows.get(name, []))
            if kept < SAMPLE_ROWS:
                rows.setdefault(name, []).append(value.reshape(-1, value.shape[-1])[: SAMPLE_ROWS - kept])
    return {
        name: ActivationStats(sums[name] / counts[name], maxima[name], np.concatenate(rows[name]).astype(np.float32))
        for name in sums
    }
