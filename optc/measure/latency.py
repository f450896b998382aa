"""Latency of several sessions measured side by side.

Runs are interleaved (A, B, A, B, ...) after a warm-up, so a noisy neighbour or a frequency change hits every
variant alike and their ratio stays meaningful even when the absolute figures drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel

from optc.measure.inference_call import inference_call


class LatencyStats(BaseModel):
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    cv: float | None = None  # stdev / mean: how much single runs scatter; large values mean a noisy machine

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        ms = np.asarray(seconds) * 1e3
        stdev = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
        return cls(
            runs=len(ms),
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            stdev_ms=stdev,
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            cv=stdev / float(ms.mean()) if ms.mean() > 0 else None,
        )


def measure_interleaved(
    sessions: dict[str, ort.InferenceSession],
    feed: dict[str, np.ndarray],
    warmup: int,
    runs: int,
    min_time_s: float,
    on_round: Callable[[int], None] | None = None,
    include_copies: bool = False,
) -> dict[str, LatencyStats]:
    """Time every session on the same ``feed``; at least ``runs`` rounds and ``min_time_s`` seconds in all.

    On CUDA the inputs are bound on the device once, so host-device copies are not timed unless ``include_copies``.
    """
    calls = {label: inference_call(session, feed, include_copies) for label, session in sessions.items()}
    timings = time_interleaved(calls, warmup, runs, min_time_s, on_round)
    return {label: LatencyStats.of(values) for label, values in timings.items()}


def time_interleaved(
    calls: dict[str, Callable[[], None]],
    warmup: int,
    runs: int,
    min_time_s: float,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, round by round (index i of every list is the same round)."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    timings: dict[str, list[float]] = {label: [] for label in calls}
    started = time.perf_counter()
    rounds = 0
    while rounds < runs or time.perf_counter() - started < min_time_s:
        # Alternate which variant goes first so neither always runs with a warmer cache.
        order = list(calls.items()) if rounds % 2 == 0 else list(reversed(calls.items()))
        for label, call in order:
            t0 = time.perf_counter()
            call()
            timings[label].append(time.perf_counter() - t0)
        rounds += 1
        if on_round:
            on_round(rounds)
    return timings
