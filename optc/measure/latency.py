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


class LatencyStats(BaseModel):
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencyStats:
        ms = np.asarray(seconds) * 1e3
        return cls(
            runs=len(ms),
            p50_ms=float(np.percentile(ms, 50)),
            p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)),
            mean_ms=float(ms.mean()),
            stdev_ms=float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
        )


def measure_interleaved(
    sessions: dict[str, ort.InferenceSession],
    feed: dict[str, np.ndarray],
    warmup: int,
    runs: int,
    min_time_s: float,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, LatencyStats]:
    """Time every session on the same ``feed``; at least ``runs`` rounds and ``min_time_s`` seconds in all."""
    feeds = {label: _feed_for(session, feed) for label, session in sessions.items()}
    for label, session in sessions.items():
        for _ in range(warmup):
            session.run(None, feeds[label])
    timings: dict[str, list[float]] = {label: [] for label in sessions}
    started = time.perf_counter()
    rounds = 0
    while rounds < runs or time.perf_counter() - started < min_time_s:
        # Alternate which variant goes first so neither always runs with a warmer cache.
        order = list(sessions.items()) if rounds % 2 == 0 else list(reversed(sessions.items()))
        for label, session in order:
            t0 = time.perf_counter()
            session.run(None, feeds[label])
            timings[label].append(time.perf_counter() - t0)
        rounds += 1
        if on_round:
            on_round(rounds)
    return {label: LatencyStats.of(values) for label, values in timings.items()}


def _feed_for(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: feed[i.name] for i in session.get_inputs()}
