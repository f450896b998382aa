"""Whether a latency difference is real: the spread of single runs, and a bootstrap interval for a p50 ratio.

Interleaved runs come in rounds (one call of every model per round), so round *i* of two models met the same machine
state. Resampling whole rounds keeps that pairing: the interval reflects how much the ratio of medians moves with
the noise the run actually met. Resampling cannot see what differs between two sessions of one model (memory
placement, which core, cache alignment): benching a model against itself on a shared 2-vCPU machine gave p50 ratios
off 1.0 by up to 1.8 % with intervals far narrower than that. So the noise bound is never below
``SESSION_FLOOR``; a ratio within the bound of 1.0 cannot be told apart from "no difference".
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
NOISY_CV = 0.10  # single runs scattering by more than 10 % of the mean: figures of a busy or throttling machine
SEED = 0  # a fixed seed: the same timings always give the same interval
SESSION_FLOOR = 0.03  # smallest resolvable ratio difference: session-to-session spread, see above


class Ratio(BaseModel):
    """p50 of a model over p50 of the first (the baseline): below 1 is faster."""

    value: float
    ci95: tuple[float, float]  # bootstrap interval of the ratio over resampled rounds
    noise_bound: float  # in ratio units: the interval's larger half-width, at least SESSION_FLOOR
    significant: bool  # |value - 1| > noise_bound: a real difference, not noise


def p50_ratio(baseline_s: list[float], other_s: list[float]) -> Ratio:
    base, other = np.asarray(baseline_s), np.asarray(other_s)
    if len(base) != len(other):
        raise ValueError("interleaved timings must have one entry per round for both models")
    value = float(np.median(other) / np.median(base))
    rounds = np.random.default_rng(SEED).integers(0, len(base), size=(BOOTSTRAP_RESAMPLES, len(base)))
    ratios = np.median(other[rounds], axis=1) / np.median(base[rounds], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = (float(v) for v in np.percentile(ratios, [tail, 100 - tail]))
    bound = max(high - value, value - low, SESSION_FLOOR)
    return Ratio(value=value, ci95=(low, high), noise_bound=bound, significant=abs(value - 1.0) > bound)


def is_noisy(cv: float | None, threshold: float = NOISY_CV) -> bool:
    return cv is not None and cv > threshold
