"""The original and the optimized model measured on one provider: accuracy, latency, and for decoders the prefill,
the decode step and next-token agreement.

Both sessions are open at once and timed interleaved when their weights together are small. Past
``TOGETHER_LIMIT_BYTES`` they are opened one at a time — everything the first model is needed for is done, its
session is closed, then the second's — so measuring a multi-gigabyte model never holds two copies of it: its
latency is then timed model after model instead of interleaved, and the measurement says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from optc.data import Dataset, InputSpec
from optc.measure.accuracy import AccuracyResult, compare_outputs, run_all, shared_outputs
from optc.measure.decoder import DecoderMeasurement, decoder_feeds, decoder_io, decoder_measurement, token_predictions
from optc.measure.latency import LatencyStats, measure_interleaved
from optc.measure.providers import Unavailable, open_session

TOGETHER_LIMIT_BYTES = 2**30
LABELS = ("original", "optimized")


@dataclass(frozen=True)
class ModelSource:
    source: bytes | str  # what InferenceSession takes
    size_bytes: int
    outputs: list[str]


@dataclass(frozen=True)
class LatencySettings:
    threads: int
    warmup: int
    runs: int
    min_time_s: float


@dataclass
class PairResult:
    accuracy: AccuracyResult
    latency: dict[str, LatencyStats]  # by model label: the batch, or for a decoder the decode step
    decoder: DecoderMeasurement | None
    interleaved: bool


def measure_pair(
    provider: str,
    models: dict[str, ModelSource],
    dataset: Dataset,
    specs: list[InputSpec],
    metric: str,
    batch: int,
    latency: LatencySettings,
) -> PairResult | Unavailable:
    together = sum(m.size_bytes for m in models.values()) <= TOGETHER_LIMIT_BYTES
    names = shared_outputs(models["original"].outputs, models["optimized"].outputs)
    io = decoder_io(specs, models["original"].outputs)
    outputs, predictions, open_sessions = {}, {}, {}
    feeds: dict[str, dict[str, np.ndarray]] = {}
    timings: dict[str, dict[str, LatencyStats]] = {}  # by feed, then model
    for label in LABELS:  # the original first: a decoder's decode step needs the cache it makes
        session = open_session(models[label].source, provider, latency.threads)
        if isinstance(session, Unavailable):
            return session
        feeds = feeds or (decoder_feeds(io, specs, dataset, session) if io else {"batch": dataset.first_batch(batch)})
        outputs[label] = run_all(session, dataset, batch, names)
        if io is not None:
            predictions[label] = token_predictions(io, specs, session, dataset)
        if together:
            open_sessions[label] = session
        else:
            for key, feed in feeds.items():
                timings.setdefault(key, {}).update(_timed({label: session}, feed, latency))
        del session  # one at a time: the next model's session opens only once this one is gone
    for key, feed in feeds.items() if together else ():
        timings[key] = _timed(open_sessions, feed, latency)
    open_sessions.clear()
    accuracy = compare_outputs(names, outputs["original"], outputs["optimized"], dataset, metric, batch)
    if io is None:
        return PairResult(accuracy=accuracy, latency=timings["batch"], decoder=None, interleaved=together)
    decoder = decoder_measurement(
        feeds, timings, predictions["original"], predictions["optimized"], real_tokens=not dataset.synthetic
    )
    return PairResult(accuracy=accuracy, latency=timings["decode"], decoder=decoder, interleaved=together)


def _timed(
    sessions: dict[str, ort.InferenceSession], feed: dict[str, np.ndarray], latency: LatencySettings
) -> dict[str, LatencyStats]:
    return measure_interleaved(sessions, feed, latency.warmup, latency.runs, latency.min_time_s)
