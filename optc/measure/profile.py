"""Where the time goes, per op type: ONNX Runtime's profiler, aggregated, and compared before vs after.

The profiler records one event per node per run. Times are of the graph ONNX Runtime actually ran, after its own
fusions, so op types can differ from the ONNX file (a Conv+Relu shows as one Conv). Profiling slows every run, so it
runs on sessions of its own, never on the ones timed for latency. On CUDA the per-node times are ONNX Runtime's
host-side view of each kernel; read their shares as indicative.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from optc.measure.inference_call import inference_call
from optc.measure.providers import Unavailable, open_session

KERNEL_SUFFIX = "_kernel_time"
PROFILE_WARMUP = 2
PROFILE_RUNS = 10


class OpTime(BaseModel):
    op_type: str
    ms_per_run: float
    share: float  # of all node time in a run, 0..1
    calls_per_run: float


class OpProfile(BaseModel):
    runs: int
    ms_per_run: float  # total node time per run (excludes the session's own overhead)
    ops: list[OpTime]  # largest share first


class OpShareChange(BaseModel):
    op_type: str
    before_ms: float  # per run; 0 when the op type is absent
    after_ms: float
    before_share: float
    after_share: float


class ProfileComparison(BaseModel):
    before: OpProfile
    after: OpProfile
    ops: list[OpShareChange]  # largest after-share first, then op types that disappeared


def profile_op_types(
    source: bytes | str, provider: str, threads: int, feed: dict[str, np.ndarray], workdir: Path, label: str
) -> OpProfile | Unavailable:
    session = open_session(source, provider, threads, profile_prefix=str(workdir / f"profile-{label}"))
    if isinstance(session, Unavailable):
        return session
    call = inference_call(session, feed)
    for _ in range(PROFILE_WARMUP + PROFILE_RUNS):
        call()
    path = Path(session.end_profiling())
    try:
        events = json.loads(path.read_text())
    finally:
        path.unlink(missing_ok=True)
    return aggregate(events, skip_runs=PROFILE_WARMUP)


def aggregate(events: list[dict], skip_runs: int) -> OpProfile:
    """Per op type time of the node events after the first ``skip_runs`` runs (warm-up allocates and is slower)."""
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    runs = max(len(starts) - skip_runs, 1)
    cutoff = starts[skip_runs] if len(starts) > skip_runs else 0
    time_us: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith(KERNEL_SUFFIX) or event["ts"] < cutoff:
            continue
        op_type = event.get("args", {}).get("op_name", "?")
        time_us[op_type] += event.get("dur", 0)
        calls[op_type] += 1
    total = sum(time_us.values())
    ops = [
        OpTime(
            op_type=op,
            ms_per_run=us / runs / 1e3,
            share=us / total if total else 0.0,
            calls_per_run=calls[op] / runs,
        )
        for op, us in sorted(time_us.items(), key=lambda item: -item[1])
    ]
    return OpProfile(runs=runs, ms_per_run=total / runs / 1e3, ops=ops)


def compare_profiles(before: OpProfile, after: OpProfile) -> ProfileComparison:
    old = {o.op_type: o for o in before.ops}
    new = {o.op_type: o for o in after.ops}
    order = [o.op_type for o in after.ops] + [op for op in old if op not in new]
    changes = [
        OpShareChange(
            op_type=op,
            before_ms=old[op].ms_per_run if op in old else 0.0,
            after_ms=new[op].ms_per_run if op in new else 0.0,
            before_share=old[op].share if op in old else 0.0,
            after_share=new[op].share if op in new else 0.0,
        )
        for op in order
    ]
    return ProfileComparison(before=before, after=after, ops=changes)
