"""Shared measuring tools for the bench scripts.

Every comparison is made inside one run: the variants' sessions are timed interleaved after warm-up (optc's own
``measure_interleaved``), and figures are medians with their spread (p10–p90). One intra-op thread by default: on
this kind of shared 2-vCPU machine two threads make latency swing several-fold within a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
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


# Linux carries a process's pre-exec memory high-water mark into its rusage, and a child starts as a copy (or a
# borrower) of its parent: measured directly from a bench process holding gigabytes, every child would "peak" at
# the parent's size. A small launcher process sits in between, so the peak reported is the command's own. rusage
# gives the largest single process, not the sum of processes alive together (optc runs risky native steps in a
# child), so the launcher also samples the resident sets of the whole process tree and reports the larger peak.
_LAUNCHER = """
import json, os, subprocess, sys, threading, time
args, report = json.loads(sys.argv[1]), sys.argv[2]

def tree_rss_kb(root):
    children, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total

started = time.perf_counter()
process = subprocess.Popen(args)
peak, done = [0], threading.Event()

def sample():
    while not done.wait(0.2):
        peak[0] = max(peak[0], tree_rss_kb(process.pid))

sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
_, status, usage = os.wait4(process.pid, 0)
done.set()
with open(report, "w") as f:
    json.dump({"wall_s": time.perf_counter() - started, "peak_kb": max(usage.ru_maxrss, peak[0]),
               "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(args: list[str], cwd: Path = ROOT) -> CommandRun:
    """Run a command in a fresh process and report its wall time and peak resident memory."""
    with tempfile.NamedTemporaryFile(suffix=".json") as report:
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, json.dumps(args), report.name], cwd=cwd, capture_output=True, text=True
        )
        figures = json.loads(Path(report.name).read_text() or "{}") if done.returncode == 0 else {}
    if not figures:
        raise RuntimeError(f"the measuring launcher failed: {done.stderr[-1000:]}")
    return CommandRun(figures["wall_s"], figures["peak_kb"] / 1024, figures["returncode"], done.stdout, done.stderr)


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
