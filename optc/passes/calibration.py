"""Calibration for static quantization: activation ranges gathered in one streaming pass over the data.

ONNX Runtime's own calibrators keep every batch's outputs of an augmented model (every float tensor) in memory
until the end. Here only the tensors the quantizer will ask about are added as outputs, and each batch is folded
into running statistics — min/max (or their moving average), or a histogram for ``entropy``/``percentile`` — before
the next batch is read, so memory does not grow with the number of samples. The ranges are written in ONNX Runtime's
calibration-cache format, which ``quantize_static`` reads instead of calibrating again.
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto
from onnxruntime.quantization import CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.calibrate import HistogramCollector, save_tensors_data
from pydantic import BaseModel, ConfigDict, Field, model_validator

from optc.measure.providers import check_options
from optc.measure.values import cut_feeds
from optc.verify import session_source

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)
# Histogram sizes ONNX Runtime's own calibrators use for these methods.
ENTROPY_BINS = 128
PERCENTILE_BINS = 2048
MIN_RANGE = 1e-6
# What one calibration run may hold in activations: every tensor is an output, so a batch of 16 of a ViT is
# gigabytes. Runs are cut to fit (where the batch axis is symbolic), whatever the configured batch size.
CALIBRATION_RUN_BYTES = 256 * 2**20


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax",
        description="minmax: observed range; entropy: range minimising KL divergence of the histogram; "
        "percentile: range covering `percentile` % of the values (clips outliers).",
    )
    percentile: float = Field(default=99.999, gt=50, le=100, description="For method percentile.")
    moving_average: bool = Field(
        default=False, description="For minmax: a moving average of per-batch min/max instead of the extremes."
    )
    averaging_constant: float = Field(
        default=0.01, gt=0, lt=1, description="Weight of each new batch (moving_average)."
    )
    data: Path | None = Field(
        default=None,
        description=".npz named after the model inputs (first axis = samples) or a folder of .npz/.npy files, "
        "relative to the recipe; --calibration-data wins. Without data, seeded synthetic inputs (with a warning).",
    )
    samples: int | None = Field(default=None, ge=1, description="Use at most this many samples.")
    batch_size: int = Field(
        default=16,
        ge=1,
        description="Samples per calibration batch; runs are cut smaller when a batch's activations would pass 256 MB.",
    )

    @model_validator(mode="after")
    def _fields_of_one_method(self) -> CalibrationConfig:
        if "percentile" in self.model_fields_set and self.method != "percentile":
            raise ValueError(f"percentile applies only to method: percentile (method is {self.method})")
        if {"moving_average", "averaging_constant"} & self.model_fields_set and self.method != "minmax":
            raise ValueError(f"moving_average applies only to method: minmax (method is {self.method})")
        return self


class RangeCollector(Protocol):
    def update(self, batch: dict[str, np.ndarray]) -> None: ...

    def ranges(self) -> dict[str, tuple[float, float]]: ...


class MinMaxCollector:
    """Running extremes, or an exponential moving average of each batch's min and max."""

    def __init__(self, moving_average: bool, averaging_constant: float) -> None:
        self.moving_average = moving_average
        self.constant = averaging_constant
        self.state: dict[str, tuple[float, float]] = {}

    def update(self, batch: dict[str, np.ndarray]) -> None:
        for name, array in batch.items():
            array = finite_values(array)
            if array.size == 0:
                continue
            low, high = float(array.min()), float(array.max())
            if name not in self.state:
                self.state[name] = (low, high)
                continue
            old_low, old_high = self.state[name]
            if self.moving_average:
                self.state[name] = (
                    old_low + self.constant * (low - old_low),
                    old_high + self.constant * (high - old_high),
                )
            else:
                self.state[name] = (min(old_low, low), max(old_high, high))

    def ranges(self) -> dict[str, tuple[float, float]]:
        return dict(self.state)


class HistogramRangeCollector:
    """ONNX Runtime's histogram collector fed one batch at a time (it merges histograms as ranges widen)."""

    def __init__(self, method: Literal["entropy", "percentile"], percentile: float, symmetric: bool) -> None:
        bins = ENTROPY_BINS if method == "entropy" else PERCENTILE_BINS
        self.collector = HistogramCollector(
            method=method,
            symmetric=symmetric,
            num_bins=bins,
            num_quantized_bins=ENTROPY_BINS,
            percentile=percentile,
            scenario="same",
        )

    def update(self, batch: dict[str, np.ndarray]) -> None:
        with _silenced_stdout():  # the collector prints progress on stdout, which belongs to --json
            finite = {name: finite_values(array).astype(np.float32, copy=False) for name, array in batch.items()}
            self.collector.collect({name: array for name, array in finite.items() if array.size})

    def ranges(self) -> dict[str, tuple[float, float]]:
        with _silenced_stdout():
            thresholds = self.collector.compute_collection_result()
        return {name: (float(values[0]), float(values[1])) for name, values in thresholds.items()}


@dataclass
class Calibration:
    ranges: dict[str, tuple[float, float]]
    samples: int
    batches: int
    unranged: list[str] = field(default_factory=list)  # tensors asked about that never held a finite float value


def tensors_to_calibrate(model: onnx.ModelProto, op_types: set[str] | None) -> list[str]:
    """Float activations read or written by the nodes the quantizer may touch (all nodes when ``op_types`` is None).

    These are the tensors ONNX Runtime's quantizer looks up ranges for. Tensors whose type shape inference could not
    tell (a ConstantOfShape output, say) are included too: their values show their type, and a float tensor the
    quantizer asks about without a range stops it with "Quantization parameters are not specified".
    """
    graph = model.graph
    types = {v.name: v.type for v in itertools.chain(graph.value_info, graph.output, graph.input)}
    initializers = {t.name for t in graph.initializer}
    chosen: dict[str, None] = {}
    for node in graph.node:
        if op_types is not None and node.op_type not in op_types:
            continue
        for name in itertools.chain(node.input, node.output):
            value_type = types.get(name)
            untyped = value_type is None or not value_type.tensor_type.elem_type
            floating = (
                value_type is not None
                and value_type.HasField("tensor_type")
                and value_type.tensor_type.elem_type in FLOAT_TYPES
            )
            if name and name not in initializers and (floating or untyped):
                chosen[name] = None
    return list(chosen)


def with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs ``tensors`` (those that are not outputs already)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(onnx.ValueInfoProto(name=name) for name in tensors if name not in present)
    return augmented


def collector_for(config: CalibrationConfig, symmetric: bool) -> RangeCollector:
    if config.method == "minmax":
        return MinMaxCollector(config.moving_average, config.averaging_constant)
    return HistogramRangeCollector(config.method, config.percentile, symmetric)


def calibrate(
    model: onnx.ModelProto,
    tensors: list[str],
    batches: Iterable[dict[str, np.ndarray]],
    collector: RangeCollector,
    workdir: Path,
) -> Calibration:
    """Run ``model`` over ``batches`` once, folding the values of ``tensors`` into ``collector`` batch by batch."""
    session = ort.InferenceSession(
        session_source(with_outputs(model, tensors), workdir, "calibration"),
        sess_options=check_options(),
        providers=["CPUExecutionProvider"],
    )
    input_names = [i.name for i in session.get_inputs()]
    samples = count = 0
    floating: set[str] = set()
    per_run, learned = 1, False  # the first runs are one sample each, to learn what a sample's activations weigh
    for feed in batches:
        for part in cut_feeds([feed], session, per_run):
            values = session.run(tensors, {name: part[name] for name in input_names}) if tensors else []
            floats = {n: v for n, v in zip(tensors, values, strict=True) if v.dtype.kind == "f"}
            if not learned:
                weight = sum(v.nbytes for v in floats.values()) / max(_samples_in(part), 1)
                per_run, learned = max(1, int(CALIBRATION_RUN_BYTES // max(weight, 1))), True
            floating.update(floats)
            collector.update(floats)
            samples += _samples_in(part)
        count += 1
    ranges = collector.ranges()
    unranged = [t for t in tensors if t in floating and t not in ranges]
    return Calibration(ranges=ranges, samples=samples, batches=count, unranged=unranged)


def _samples_in(feed: dict[str, np.ndarray]) -> int:
    return len(next(iter(feed.values()))) if feed else 0


def finite_values(array: np.ndarray) -> np.ndarray:
    """The finite values of ``array`` (flattened when any are not): a log-mel of silence holds -inf, which as a
    range endpoint would make every scale infinite."""
    finite = np.isfinite(array)
    return array if finite.all() else array[finite]


def usable_range(low: float, high: float) -> tuple[float, float]:
    """A range ONNX Runtime can compute a scale from: containing zero (as it requires) and not empty (a constant
    tensor, whose zero width fails its "scale issue" assertion)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high - low < MIN_RANGE:
        high = low + MIN_RANGE
    return low, high


def write_calibration_cache(ranges: dict[str, tuple[float, float]], path: Path) -> None:
    """Save ranges where ``quantize_static(calibration_cache_path=...)`` reads them (labelled MinMax: the quantizer
    only reads the range, whatever method produced it)."""
    data = {}
    for name, (low, high) in ranges.items():
        low, high = usable_range(low, high)
        data[name] = TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


@contextlib.contextmanager
def _silenced_stdout():
    with contextlib.redirect_stdout(io.StringIO()):
        yield
