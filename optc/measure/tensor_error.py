"""Error of every intermediate tensor two graphs share by name, to find where an optimized model departs.

Both graphs are run with every shared tensor exposed as an extra output. Passes keep the names of the tensors they
do not rewrite (a quantized Conv still writes the original Conv's output name), so the shared names are the points
where the two graphs can be compared. In a QDQ graph what the next layer reads is the dequantized copy of a tensor
(``x_DequantizeLinear_Output``), and the name itself may be written before a clamp the quantizer folded into the
quantization (a Conv writing the name of the Relu it absorbed): the dequantized copy is what gets compared. Exposing
a tensor stops ONNX Runtime from fusing across it, so the figures are of a slightly less optimized execution;
numerically that is the same graph.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from pydantic import BaseModel

from optc.errors import OptcError
from optc.measure.accuracy import sqnr_db
from optc.measure.providers import Unavailable, open_session
from optc.measure.values import cut_feeds, run_as_arrays
from optc.verify import session_source

DEQUANTIZED = "_DequantizeLinear_Output"  # ONNX Runtime's name for a tensor's dequantized copy in QDQ graphs


class TensorError(BaseModel):
    name: str
    position: int  # index of the producing node in the original graph: how deep in the model the tensor is
    original_op: str
    optimized_op: str
    shape: list[int]  # of the last batch
    sqnr_db: float | None  # None: identical
    cosine: float  # of the whole tensor over every sample
    max_abs_error: float
    mean_abs_error: float


class TensorComparison(BaseModel):
    tensors: list[TensorError]  # worst (lowest SQNR) first
    skipped: dict[str, str]  # shared tensor name -> why it was not compared (dtype or shape differ)


@dataclass
class _Accumulator:
    """Running sums over batches, so memory stays at one batch of activations."""

    signal: float = 0.0
    noise: float = 0.0
    candidate: float = 0.0
    dot: float = 0.0
    abs_sum: float = 0.0
    abs_max: float = 0.0
    count: int = 0
    shape: tuple[int, ...] = ()

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        ref, cand = reference.astype(np.float64).ravel(), candidate.astype(np.float64).ravel()
        diff = ref - cand
        self.signal += float(ref @ ref)
        self.noise += float(diff @ diff)
        self.candidate += float(cand @ cand)
        self.dot += float(ref @ cand)
        self.abs_sum += float(np.abs(diff).sum())
        self.abs_max = max(self.abs_max, float(np.abs(diff).max(initial=0.0)))
        self.count += diff.size
        self.shape = reference.shape


def compare_tensors(
    original: onnx.ModelProto,
    optimized: onnx.ModelProto,
    feeds: Iterable[dict[str, np.ndarray]],
    provider: str,
    workdir: Path,
) -> TensorComparison:
    """Run both models on ``feeds`` with every tensor they share exposed; the error of each, worst first."""
    producers_before, producers_after = _producers(original), _producers(optimized)
    counterpart = {
        name: f"{name}{DEQUANTIZED}" if f"{name}{DEQUANTIZED}" in producers_after else name
        for name in producers_before
        if name in producers_after or f"{name}{DEQUANTIZED}" in producers_after
    }
    shared = list(counterpart)
    sessions = {}
    for label, model, exposed in (
        ("original", original, shared),
        ("optimized", optimized, list(counterpart.values())),
    ):
        session = open_session(session_source(_exposing(model, exposed), workdir, f"tensors-{label}"), provider)
        if isinstance(session, Unavailable):
            raise OptcError(f"{provider}: cannot compare tensors on this provider — {session.reason}")
        sessions[label] = session
    names = {label: [o.name for o in s.get_outputs()] for label, s in sessions.items()}
    sums: dict[str, _Accumulator] = {name: _Accumulator() for name in shared}
    skipped: dict[str, str] = {}
    for feed in cut_feeds(feeds, sessions["original"], 1):  # every tensor is an output: one sample per run
        values = {
            label: dict(zip(names[label], run_as_arrays(s, None, feed), strict=True)) for label, s in sessions.items()
        }
        for name in shared:
            if name in skipped:
                continue
            reason = _incomparable(values["original"][name], values["optimized"][counterpart[name]])
            if reason:
                skipped[name] = reason
                continue
            sums[name].add(values["original"][name], values["optimized"][counterpart[name]])
    errors = [
        _error(name, sums[name], producers_before[name], producers_after[counterpart[name]])
        for name in shared
        if name not in skipped
    ]
    # Identical tensors (SQNR None, i.e. infinite) sort last; ties keep graph order.
    errors.sort(key=lambda e: (e.sqnr_db is None, e.sqnr_db if e.sqnr_db is not None else 0.0, e.position))
    return TensorComparison(tensors=errors, skipped=skipped)


def _producers(model: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """Tensor name -> (node index, op type) of the node writing it, in graph order."""
    return {
        output: (index, node.op_type) for index, node in enumerate(model.graph.node) for output in node.output if output
    }


def _exposing(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in present:
            # An output without a type: ONNX Runtime infers it, and the graph's value_info may not have one.
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    return exposed


def _incomparable(reference: np.ndarray, candidate: np.ndarray) -> str | None:
    if reference.dtype.kind != "f" or candidate.dtype.kind != "f":
        return f"not floating point ({reference.dtype} vs {candidate.dtype})"
    if reference.shape != candidate.shape:
        return f"shapes differ ({list(reference.shape)} vs {list(candidate.shape)})"
    return None


def _error(name: str, sums: _Accumulator, before: tuple[int, str], after: tuple[int, str]) -> TensorError:
    norms = np.sqrt(sums.signal * sums.candidate)
    # Two zero tensors agree; one zero and one not are orthogonal.
    cosine = sums.dot / norms if norms > 0 else (1.0 if sums.noise == 0 else 0.0)
    return TensorError(
        name=name,
        position=before[0],
        original_op=before[1],
        optimized_op=after[1],
        shape=list(sums.shape),
        sqnr_db=sqnr_db(sums.signal, sums.noise),
        cosine=float(cosine),
        max_abs_error=sums.abs_max,
        mean_abs_error=sums.abs_sum / sums.count if sums.count else 0.0,
    )
