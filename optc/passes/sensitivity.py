"""Which nodes hurt accuracy most when quantized, and the fewest to keep in float to meet an accuracy budget.

Sensitivity is measured by quantizing one node alone (every other node excluded) and comparing the model's outputs
with the float model's on a probe of the calibration data: the relative L2 error of the outputs is that node's own
contribution, free of the errors of the layers before it. The budget search then keeps nodes in float in that order
until the recipe's metric drop fits, and finally puts back any kept node the budget can spare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from optc.errors import PassError
from optc.measure.providers import check_options
from optc.measure.values import run_as_arrays

Quantize = Callable[[set[str]], onnx.ModelProto]  # excluded node names -> quantized model
# Ops that only move or clip int8 values: they reuse their input's scale, so they add no error of their own.
PASS_THROUGH_OPS = frozenset(
    {
        "Relu",
        "Clip",
        "MaxPool",
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Gather",
        "Slice",
        "Split",
        "Resize",
        "Pad",
        "Expand",
        "Tile",
        "DepthToSpace",
        "SpaceToDepth",
    }
)


@dataclass
class NodeSensitivity:
    node: str
    op_type: str
    error: float  # relative L2 error of the model outputs when only this node is quantized

    def as_row(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "error": round(self.error, 6)}


@dataclass
class BudgetFit:
    model: onnx.ModelProto
    kept: list[str]  # node names kept in float to meet the budget, most sensitive first
    drop: float
    tried: list[dict]  # each evaluated configuration: {"kept_in_float": n, "drop": d}


def run_outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=check_options(), providers=["CPUExecutionProvider"]
    )
    per_feed = [run_as_arrays(session, None, feed) for feed in feeds]
    return [np.concatenate([outputs[i].reshape(-1) for outputs in per_feed]) for i in range(len(per_feed[0]))]


def output_error(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Mean over float outputs of ||candidate - reference|| / ||reference||."""
    errors = []
    for ref, cand in zip(reference, candidate, strict=True):
        if ref.dtype.kind != "f":
            continue
        ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
        errors.append(float(np.linalg.norm(cand64 - ref64) / max(np.linalg.norm(ref64), 1e-12)))
    return float(np.mean(errors)) if errors else 0.0


def rank_nodes(
    quantize: Quantize,
    float_model: onnx.ModelProto,
    candidates: list[onnx.NodeProto],
    probe: list[dict[str, np.ndarray]],
) -> list[NodeSensitivity]:
    """Candidates from most to least sensitive."""
    reference = run_outputs(float_model, probe)
    everything = {node.name for node in float_model.graph.node}
    ranking = []
    for node in candidates:
        alone = quantize(everything - {node.name})
        ranking.append(NodeSensitivity(node.name, node.op_type, output_error(reference, run_outputs(alone, probe))))
    return sorted(ranking, key=lambda s: -s.error)


def fit_budget(
    quantize: Quantize,
    ranking: list[NodeSensitivity],
    always_excluded: set[str],
    drop_of: Callable[[onnx.ModelProto], float],
    budget: float,
    label: str,
) -> BudgetFit:
    """Keep the most sensitive nodes in float until ``drop_of(model) <= budget``, then return any the budget spares."""
    kept: list[str] = []
    model = quantize(set(always_excluded))
    drop = drop_of(model)
    tried = [{"kept_in_float": 0, "drop": round(drop, 4)}]
    for entry in ranking:
        if drop <= budget:
            break
        kept.append(entry.node)
        model = quantize(always_excluded | set(kept))
        drop = drop_of(model)
        tried.append({"kept_in_float": len(kept), "drop": round(drop, 4)})
    if drop > budget:
        raise PassError(
            label,
            f"accuracy_budget {budget:g} cannot be met: with all {len(kept)} ranked nodes in float the drop is "
            f"{drop:.3f} points",
            hint="raise accuracy_budget, exclude more op types, or use mode: dynamic",
        )
    # The greedy order can overshoot: a node kept early may not be needed once later ones are in float.
    for name in list(kept[:-1]):
        trial = [k for k in kept if k != name]
        candidate = quantize(always_excluded | set(trial))
        candidate_drop = drop_of(candidate)
        tried.append({"kept_in_float": len(trial), "drop": round(candidate_drop, 4)})
        if candidate_drop <= budget:
            kept, model, drop = trial, candidate, candidate_drop
    return BudgetFit(model=model, kept=kept, drop=drop, tried=tried)
