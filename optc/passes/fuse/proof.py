"""The proof that fusing changed nothing: run the original and the fused model on the same inputs and compare.

Tolerance is relative to each output's scale: an output passes when ``max |fused - original| <= tolerance *
max |original|`` over all compared samples (the scale is floored at 1e-6 so an all-zero output must stay zero).
Folding reorders float arithmetic, so exact equality is not expected for float outputs; integer and boolean outputs
must match exactly.
"""

from __future__ import annotations

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
PROOF_BATCHES = 4  # up to 32 samples: enough to catch a wrong weight, cheap enough to run on every fuse
SCALE_FLOOR = 1e-6


@dataclass(frozen=True)
class OutputCheck:
    output: str
    max_abs_diff: float
    scale: float
    allowed: float

    @property
    def moved(self) -> bool:
        return not self.max_abs_diff <= self.allowed  # NaN differences count as moved

    def as_row(self) -> dict:
        return {
            "output": self.output,
            "max_abs_diff": self.max_abs_diff,
            "allowed": self.allowed,
            "scale": self.scale,
            "ok": not self.moved,
        }


def compare_outputs(
    original: onnx.ModelProto, fused: onnx.ModelProto, dataset: Dataset, workdir: Path, tolerance: float
) -> tuple[list[OutputCheck], int]:
    """One check per output of the original model, and the number of samples compared."""
    batch = dataset.feed_batch_size(input_specs(original), PROOF_BATCH)
    feeds = list(islice(dataset.batches(batch), PROOF_BATCHES))
    # One model's session at a time: on a multi-gigabyte model two open sessions are gigabytes more at the peak.
    reference_runs, names = _outputs_on(original, "original", feeds, workdir, None)
    candidate_runs, _ = _outputs_on(fused, "fused", feeds, workdir, names)
    worst = dict.fromkeys(names, 0.0)
    scale = dict.fromkeys(names, 0.0)
    exact = set()
    samples = 0
    for feed, reference, candidate in zip(feeds, reference_runs, candidate_runs, strict=True):
        samples += len(next(iter(feed.values()))) if not dataset.per_sample else 1
        for name, ref, got in zip(names, reference, candidate, strict=True):
            if ref.dtype.kind not in "fc":
                exact.add(name)
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            if ref64.shape != got64.shape:
                worst[name] = float("inf")
                continue
            both_nan = np.isnan(ref64) & np.isnan(got64)
            diff = np.where(both_nan, 0.0, np.abs(ref64 - got64))
            worst[name] = max(worst[name], float(diff.max()) if diff.size else 0.0)
            finite = ref64[np.isfinite(ref64)]
            scale[name] = max(scale[name], float(np.abs(finite).max()) if finite.size else 0.0)
    checks = [
        OutputCheck(
            output=name,
            max_abs_diff=worst[name],
            scale=scale[name],
            allowed=0.0 if name in exact else tolerance * max(scale[name], SCALE_FLOOR),
        )
        for name in names
    ]
    return checks, samples


def _outputs_on(model: onnx.ModelProto, label: str, feeds: list[dict], workdir: Path, names: list[str] | None):
    session = ort.InferenceSession(
        session_source(model, workdir, f"proof_{label}"),
        sess_options=check_options(),
        providers=["CPUExecutionProvider"],
    )
    names = names or [o.name for o in session.get_outputs()]
    return [run_as_arrays(session, names, feed) for feed in feeds], names
