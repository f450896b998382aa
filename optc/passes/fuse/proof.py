"""The proof that fusing changed nothing: run the original and the fused model on the same inputs and compare.

Tolerance is relative to each output's scale: an output passes when ``max |fused - original| <= tolerance *
max |original|`` over all compared samples (the scale is floored at 1e-6 so an all-zero output must stay zero).
Folding reorders float arithmetic, so exact equality is not expected for float outputs; integer and boolean outputs
must match exactly.

Some outputs amplify reordering far beyond that tolerance: a deep detector's sigmoid that sits near 0 on its inputs
carries the logits' absolute rounding as relative error (PP-OCRv4's moved 1.5e-7 at a scale of 1e-4 — and so did the
unfused model between ONNX Runtime's own optimization levels). When an output fails the tolerance, the original is
run once more with ONNX Runtime's graph optimizations off: what its own rewrites move the output by is this model's
rounding noise, and the fused model may differ by up to ``NOISE_MULTIPLE`` times that.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from optc.data import Dataset, input_specs
from optc.measure.providers import check_options
from optc.measure.values import run_as_arrays
from optc.verify import session_source

PROOF_BATCH = 8
PROOF_BATCHES = 4  # up to 32 samples: enough to catch a wrong weight, cheap enough to run on every fuse ...
# ... but no more batches than the original runs in this many seconds (at least one): a wrong weight shows on any
# input, and DNSMOS's 32 clips of 9 s took 32 s of a 48-node model's fuse.
PROOF_SECONDS = 4.0
SCALE_FLOOR = 1e-6
NOISE_MULTIPLE = 4.0


@dataclass(frozen=True)
class OutputCheck:
    output: str
    max_abs_diff: float
    scale: float
    allowed: float
    noise: float | None = None  # max |original - original without ONNX Runtime's optimizations|, when measured

    @property
    def moved(self) -> bool:
        return not self.max_abs_diff <= self.allowed  # NaN differences count as moved

    def as_row(self) -> dict:
        return {
            "output": self.output,
            "max_abs_diff": self.max_abs_diff,
            "allowed": self.allowed,
            "scale": self.scale,
            "noise": self.noise,
            "ok": not self.moved,
        }


def compare_outputs(
    original: onnx.ModelProto, fused: onnx.ModelProto, dataset: Dataset, workdir: Path, tolerance: float
) -> tuple[list[OutputCheck], int]:
    """One check per output of the original model, and the number of samples compared."""
    batch = dataset.feed_batch_size(input_specs(original), PROOF_BATCH)
    feeds = list(islice(dataset.batches(batch), PROOF_BATCHES))
    # One model's session at a time: on a multi-gigabyte model two open sessions are gigabytes more at the peak.
    reference_runs, names = _outputs_on(original, "original", feeds, workdir, None, seconds=PROOF_SECONDS)
    feeds = feeds[: len(reference_runs)]
    candidate_runs, _ = _outputs_on(fused, "fused", feeds, workdir, names)
    worst, scale = _max_differences(names, reference_runs, candidate_runs)
    exact = {name for name, value in zip(names, reference_runs[0], strict=True) if value.dtype.kind not in "fc"}
    checks = [
        OutputCheck(
            output=name,
            max_abs_diff=worst[name],
            scale=scale[name],
            allowed=0.0 if name in exact else tolerance * max(scale[name], SCALE_FLOOR),
        )
        for name in names
    ]
    if any(c.moved and c.output not in exact for c in checks):
        unoptimized, _ = _outputs_on(original, "unoptimized", feeds, workdir, names, optimize=False)
        noise, _ = _max_differences(names, reference_runs, unoptimized)
        checks = [
            c
            if c.output in exact
            else dataclasses.replace(c, noise=noise[c.output], allowed=max(c.allowed, NOISE_MULTIPLE * noise[c.output]))
            for c in checks
        ]
    samples = len(feeds) if dataset.per_sample else sum(len(next(iter(f.values()))) for f in feeds)
    return checks, samples


def _max_differences(names: list[str], reference_runs, candidate_runs) -> tuple[dict, dict]:
    """Per output: the largest |candidate - reference| (NaN where only one side is NaN; inf on a shape change)
    and the largest finite |reference|."""
    worst = dict.fromkeys(names, 0.0)
    scale = dict.fromkeys(names, 0.0)
    for reference, candidate in zip(reference_runs, candidate_runs, strict=True):
        for name, ref, got in zip(names, reference, candidate, strict=True):
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            if ref64.shape != got64.shape:
                worst[name] = float("inf")
                continue
            both_nan = np.isnan(ref64) & np.isnan(got64)
            diff = np.where(both_nan, 0.0, np.abs(ref64 - got64))
            worst[name] = max(worst[name], float(diff.max()) if diff.size else 0.0)
            finite = ref64[np.isfinite(ref64)]
            scale[name] = max(scale[name], float(np.abs(finite).max()) if finite.size else 0.0)
    return worst, scale


def _outputs_on(
    model: onnx.ModelProto,
    label: str,
    feeds: list[dict],
    workdir: Path,
    names: list[str] | None,
    optimize: bool = True,
    seconds: float = float("inf"),
):
    """The model's outputs on ``feeds``, or on as many of them as it gets through in ``seconds`` (at least one)."""
    options = check_options()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        session_source(model, workdir, f"proof_{label}"), sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = names or [o.name for o in session.get_outputs()]
    runs, started = [], time.perf_counter()
    for feed in feeds:
        runs.append(run_as_arrays(session, names, feed))
        if time.perf_counter() - started > seconds:
            break
    return runs, names
