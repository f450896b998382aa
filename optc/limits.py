"""Bounds on measurement settings, shared by recipes and the command line.

Beyond them a run would hang (an infinite time, 1e26 runs), exhaust memory (a batch of a billion) or crash ONNX
Runtime (100,000 threads), so they are refused as bad input instead.
"""

from __future__ import annotations

import os

MAX_BATCH_SIZE = 4096
MAX_WARMUP = 10_000
MAX_RUNS = 100_000
MAX_MIN_TIME_S = 3600.0
THREADS_PER_CORE = 4  # oversubscribing a core more than this only measures the scheduler


def max_threads() -> int:
    return THREADS_PER_CORE * (os.cpu_count() or 1)
