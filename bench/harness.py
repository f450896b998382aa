"""Shared measuring tools for the bench scripts.

Every comparison is made inside one run: the variants' sessions are timed interleaved after warm-up (optc's own
``measure_interleaved``), and figures are medians with their spread (p10–p90). One intra-op thread by default: on
this kind of shared 2-vCPU machine two threads make latency swing several-fold within a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from optc.measure.latency import LatencyStats, measure_interleaved
from optc.measure.providers import session_options

ROOT = Path(__file__).resolve().parent.parent
THREADS = 1


def session(path: Path | str, threads: int = THREADS) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def latency_table(
    paths: dict[str, Path],
    feed: dict[str, np.ndarray],
    runs: int = 30,
    warmup: int = 5,
    min_time_s: float = 3.0,
    threads: int = THREADS,
) -> dict[str, LatencyStats]:
    """Interleaved latency of every model in ``paths`` on the same ``feed``."""
    sessions = {label: session(path, threads) for label, path in paths.items()}
    return measure_interleaved(sessions, feed, warmup=warmup, runs=runs, min_time_s=min_time_s)


def spread(stats: LatencyStats) -> str:
    return f"{stats.p50_ms:.2f} ms (p90 {stats.p90_ms:.2f}, n={stats.runs})"


@dataclass
class CommandRun:
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(args: list[str], cwd: Path = ROOT) -> CommandRun:
    """Run a command in a fresh process and report its wall time and peak resident memory.

    The peak comes from ``wait4``'s rusage of that one child, so earlier children do not leak into it.
    """
    started = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stdout = process.stdout.read() if process.stdout else ""
    stderr = process.stderr.read() if process.stderr else ""
    process.returncode = os.waitstatus_to_exitcode(status)
    return CommandRun(wall, usage.ru_maxrss / 1024, process.returncode, stdout, stderr)


def optc_compress(model: Path, recipe: str | Path, output: Path, *extra: str) -> tuple[CommandRun, dict]:
    """``optc compress`` in a subprocess (as users run it); returns the run and the parsed --json result."""
    run = run_measured(
        [
            sys.executable,
            "-m",
            "optc",
            "compress",
            str(model),
            "--recipe",
            str(recipe),
            "-o",
            str(output),
            "--json",
            *extra,
        ]
    )
    try:
        payload = json.loads(run.stdout)
    except json.JSONDecodeError:
        payload = {"error": run.stderr[-2000:]}
    return run, payload


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"
