"""``sparsity: auto``: bisection for the largest sparsity whose accuracy drop stays within the budget.

Accuracy falls (roughly) monotonically with sparsity, so bisection over [low, high] needs only ``steps`` + 2 models:
the low end (the baseline row of the curve), the high end (taken at once if it fits), then the midpoints. Every
candidate is measured against the original on the evaluation data, on CPU, and the measured points form the curve the
report shows.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from optc.data import Dataset, input_specs
from optc.measure.accuracy import Evaluator
from optc.measure.latency import measure_interleaved
from optc.measure.providers import open_session
from optc.modelio import serialized_size
from optc.tensors import copy_lazy_bytes, is_lazy, tensor_values
from optc.verify import session_source

# A quick latency probe per candidate: enough to show the trend in the curve; the final model is timed properly later.
# Few runs, for a slow model's sake (DNSMOS: 0.5 s a run); a fast one runs for the minimum time.
PROBE_WARMUP, PROBE_RUNS, PROBE_MIN_TIME_S = 1, 5, 0.2


@dataclass(frozen=True)
class CurvePoint:
    sparsity: float
    accuracy: float
    drop: float
    size_bytes: int
    gzip_bytes: int
    latency_ms: float
    metric: str  # what accuracy means here: top1, top1_agreement or cosine
    samples: int  # evaluated on

    def row(self) -> dict:
        return {
            "sparsity": round(self.sparsity, 4),
            "accuracy": round(self.accuracy, 3),
            "drop": round(self.drop, 3),
            "samples": self.samples,
            "size_bytes": self.size_bytes,
            "gzip_bytes": self.gzip_bytes,
            "latency_ms": round(self.latency_ms, 4),
        }


GZIP_WINDOW_BITS = 16 + zlib.MAX_WBITS  # a gzip container, as the gzip tool writes


def gzip_size(model: onnx.ModelProto) -> int:
    """Bytes of the model's nodes and weights after gzip (level 6, as ``gzip`` uses): where unstructured sparsity
    shows. Compressed one node or tensor at a time, weights still on disk read in chunks: a whole model past
    protobuf's 2 GB limit could not even be serialized."""
    sink = _GzipCounter()
    for node in model.graph.node:
        sink.write(node.SerializeToString())
    for tensor in model.graph.initializer:
        if is_lazy(tensor):
            copy_lazy_bytes(tensor, sink)
        else:
            sink.write(tensor.raw_data if tensor.HasField("raw_data") else tensor_values(tensor).tobytes())
    return sink.finish()


class _GzipCounter:
    """A write-only file that counts the bytes gzip would write for what it is given."""

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(6, zlib.DEFLATED, GZIP_WINDOW_BITS)
        self._size = 0

    def write(self, data: bytes) -> int:
        self._size += len(self._compressor.compress(data))
        return len(data)

    def finish(self) -> int:
        return self._size + len(self._compressor.flush())


# Pruned models are float models, whose outputs do not depend on the batch size: evaluate them in large batches.
FLOAT_EVAL_BATCH = 32


class CandidateMeter:
    """Measures candidates against one original: accuracy on ``dataset``, sizes, and a short latency probe."""

    def __init__(
        self, original: onnx.ModelProto, dataset: Dataset, metric: str, feed: dict[str, np.ndarray], workdir: Path
    ) -> None:
        self.workdir = workdir
        reference = open_session(session_source(original, workdir, "search_original"), "cpu")
        self.evaluate = Evaluator(reference, dataset, input_specs(original), metric, FLOAT_EVAL_BATCH)
        self.feed = feed
        # p50 ms by sparsity, shared with the meter for_search makes: a sparsity measured again on the whole data
        # (confirmed_on_whole) is the same model, whose latency does not depend on the data
        self.latencies: dict[float, float] = {}

    def for_search(self) -> CandidateMeter:
        """A meter over the head of the data where the whole takes long to evaluate (``Evaluator.for_search``)."""
        quick = self.evaluate.for_search()
        if quick is self.evaluate:
            return self
        meter = copy.copy(self)
        meter.evaluate = quick
        return meter

    def __call__(self, sparsity: float, candidate: onnx.ModelProto) -> CurvePoint:
        session = open_session(session_source(candidate, self.workdir, "search_candidate"), "cpu")
        result = self.evaluate(session)
        if sparsity not in self.latencies:
            probe = measure_interleaved({"candidate": session}, self.feed, PROBE_WARMUP, PROBE_RUNS, PROBE_MIN_TIME_S)
            self.latencies[sparsity] = probe["candidate"].p50_ms
        return CurvePoint(
            sparsity=sparsity,
            accuracy=result.optimized,
            drop=result.drop,
            size_bytes=serialized_size(candidate),
            gzip_bytes=gzip_size(candidate),
            latency_ms=self.latencies[sparsity],
            metric=result.metric,
            samples=result.samples,
        )


@dataclass
class SearchResult:
    sparsity: float | None  # None when not even the low end fits the budget
    curve: list[CurvePoint]


def bisect_sparsity(
    build: Callable[[float], onnx.ModelProto],
    measure: Callable[[float, onnx.ModelProto], CurvePoint],
    low: float,
    high: float,
    steps: int,
    budget: float,
) -> SearchResult:
    """The largest measured sparsity in [low, high] with drop <= budget, and every point measured."""
    curve = []

    def fits(sparsity: float) -> bool:
        point = measure(sparsity, build(sparsity))
        curve.append(point)
        return point.drop <= budget

    if not fits(low):
        return SearchResult(None, sorted(curve, key=lambda p: p.sparsity))
    if fits(high):
        return SearchResult(high, sorted(curve, key=lambda p: p.sparsity))
    good, bad = low, high
    for _ in range(steps):
        middle = (good + bad) / 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return SearchResult(good, sorted(curve, key=lambda p: p.sparsity))


def confirmed_on_whole(
    result: SearchResult,
    build: Callable[[float], onnx.ModelProto],
    whole: Callable[[float, onnx.ModelProto], CurvePoint],
    budget: float,
) -> SearchResult:
    """``result`` of a search on a head of the data, its sparsity measured again on the whole (``whole``): kept where
    it fits the budget there too, else the next lower sparsity that fitted on the head and fits on the whole, else
    None. The curve shows the whole data's measurement where there is one."""
    measured = {point.sparsity: point for point in result.curve}
    fitted = sorted((p.sparsity for p in result.curve if p.drop <= budget), reverse=True)
    chosen = None
    for sparsity in fitted:
        measured[sparsity] = whole(sparsity, build(sparsity))
        if measured[sparsity].drop <= budget:
            chosen = sparsity
            break
    return SearchResult(chosen, sorted(measured.values(), key=lambda p: p.sparsity))
