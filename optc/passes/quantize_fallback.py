"""The int8 passes' fidelity targets: keep the most damaged nodes in float until the quantized model is close enough.

Two targets, either or both: ``min_cosine`` (every output's cosine to the float model on a probe of the data) and
``accuracy_budget`` (the recipe's metric drop on the evaluation data). The nodes are ranked in one pass
(``fallback.rank_by_damage``), or by their damage at the outputs where the conversion is cheap
(``fallback.rank_by_output_damage``), and kept in float in that order, as few as the targets allow. A pass may
offer a costlier conversion to try before any node is kept in float (dynamic int8's channels in float).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from optc.data import input_specs
from optc.errors import NotApplicable
from optc.measure.accuracy import Evaluator
from optc.measure.providers import check_options
from optc.modelio import serialized_size
from optc.passes.fallback import (
    Convert,
    Fallback,
    NodeDamage,
    OutputDamage,
    keep_in_float_until,
    output_agreement,
    output_ranking_feeds,
    probe_reference,
    rank_by_damage,
    rank_by_output_damage,
    run_outputs,
)
from optc.passes.registry import PassContext
from optc.report.format import human_bytes
from optc.verify import session_source

if TYPE_CHECKING:
    from optc.passes.quantize import QuantizeConfig

SENSITIVITY_ROWS = 50  # of the ranking, in the report
LITTLE_QUANTIZED_SHARE = 0.1  # below it, the int8 passes warn that the model is left mostly as it was
COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})


@dataclass(frozen=True)
class CostlierConversion:
    """A conversion slower to run but more accurate than the pass's first one, to search with when the first misses
    the targets; the names label the report's ``fidelity_search`` rows."""

    first_name: str
    name: str
    # its convert function and its first model; None where it would convert as the first one does
    make: Callable[[], tuple[Convert, onnx.ModelProto] | None]


def meet_fidelity_targets(
    float_model: onnx.ModelProto,
    original: onnx.ModelProto,
    convert: Convert,
    first: onnx.ModelProto,
    kept: dict[str, dict],
    probe: list[dict[str, np.ndarray]],
    candidate: Callable[[onnx.NodeProto], bool],
    config: QuantizeConfig,
    context: PassContext,
    eval_batch: int,
    rank_at_outputs: bool = False,
    costlier: CostlierConversion | None = None,
    unranked: set[str] = frozenset(),
) -> tuple[onnx.ModelProto, dict]:
    """The quantized model meeting ``config``'s targets, and the report's details of the search; ``kept`` (node →
    facts) gains the nodes kept in float for them. ``first`` is ``convert`` of what ``kept`` holds already;
    ``rank_at_outputs`` when ``convert`` is cheap enough to run once per candidate; ``costlier`` replaces
    ``convert`` when ``first`` misses the targets, before any node is kept in float; ``unranked`` (nodes inside
    If/Loop/Scan bodies, whose tensors the ranking cannot observe) go back to float together where the search
    cannot meet the targets without, and the search starts over."""
    if config.min_cosine is None and config.accuracy_budget is None:
        return first, {}
    workdir = context.workdir
    measured = probe_reference(float_model, probe, workdir)
    probe, reference = measured.feeds, measured.outputs
    budget = _budget_evaluator(original, context, eval_batch) if config.accuracy_budget is not None else None
    # the search's steps measure the drop on a head of the evaluation data where the whole takes long; the model it
    # settles on is measured on the whole, and the search goes on from there where that misses the budget
    step_budget = budget.for_search() if budget is not None else None

    def acceptable(model: onnx.ModelProto, evaluator: Evaluator | None = step_budget) -> tuple[bool, dict]:
        facts = output_agreement(reference, run_outputs(model, probe, workdir))
        ok = config.min_cosine is None or facts["min_cosine"] >= config.min_cosine
        # A cosine miss fails the attempt already: the run over the evaluation set is spared (on PP-OCRv4's
        # detector it was half of int8-accurate's 410 s).
        if evaluator is not None and ok:
            facts["accuracy_drop"] = round(_drop(evaluator, model, context), 4)
            if evaluator is not budget:
                facts["accuracy_samples"] = len(evaluator.dataset)
            ok = ok and facts["accuracy_drop"] <= config.accuracy_budget
        return ok, facts

    def confirmed(fallback: Fallback) -> Fallback:
        """``fallback``, where its model keeps the budget on the whole evaluation data too; else the search
        continued from it, on the whole data, down the rest of its ranking."""
        if step_budget is budget:
            return fallback
        facts = {k: v for k, v in fallback.facts.items() if k != "accuracy_samples"}  # its probe's cosine holds
        facts["accuracy_drop"] = round(_drop(budget, fallback.model, context), 4)
        ok = facts["accuracy_drop"] <= config.accuracy_budget
        fallback.tried.append({"kept_in_float": len(fallback.kept), "ok": ok, **facts})
        if ok:
            return fallback
        rest = [d for d in fallback.ranking if d.node not in fallback.kept]
        further = keep_in_float_until(
            convert,
            fallback.model,
            (lambda: rest) if fallback.ranking else rank,
            lambda model: acceptable(model, budget),
            set(kept) | set(fallback.kept),
            context.label,
            first_verdict=(ok, facts),
        )
        shifted = [{**row, "kept_in_float": row["kept_in_float"] + len(fallback.kept)} for row in further.tried[1:]]
        return Fallback(
            further.model,
            fallback.kept + further.kept,
            fallback.tried + shifted,
            fallback.ranking or further.ranking,
            further.facts,
        )

    def rank() -> list[NodeDamage] | list[OutputDamage]:
        names = [n.name for n in float_model.graph.node if n.name not in kept and candidate(n)]
        feeds = output_ranking_feeds(len(names), measured.feed_s) if rank_at_outputs else 0
        if feeds:
            return rank_by_output_damage(float_model, convert, names, set(kept), probe, workdir, feeds)
        return rank_by_damage(float_model, first, probe, workdir, lambda n: n.name not in kept and candidate(n))

    missed: list[dict] = []
    verdict, conversion = None, {}
    if costlier is not None:
        verdict = acceptable(first)
        swapped = None if verdict[0] else costlier.make()
        if swapped is not None:
            missed.append({"conversion": costlier.first_name, "kept_in_float": 0, "ok": False, **verdict[1]})
            convert, first = swapped
            verdict, conversion = None, {"conversion": costlier.name}
    unranked = set(unranked) - set(kept)
    try:
        fallback = confirmed(
            keep_in_float_until(convert, first, rank, acceptable, set(kept), context.label, first_verdict=verdict)
        )
    except NotApplicable:
        if not unranked:
            raise
        # what the search could rank did not suffice: the weights inside bodies go back to float together, and the
        # search starts over from there
        reason = f"inside a body, where the search cannot rank nodes: kept in float with the {len(unranked)} there"
        kept.update({name: {"reason": reason} for name in unranked})
        first = convert(set(kept))
        missed.append({**conversion, "kept_in_float": 0, "ok": False, "bodies_in_float": len(unranked)})
        fallback = confirmed(keep_in_float_until(convert, first, rank, acceptable, set(kept), context.label))
    tried = missed + [{**conversion, **row} for row in fallback.tried]
    targets = ", ".join(
        f"{name} {value:g}"
        for name, value in (("min_cosine", config.min_cosine), ("accuracy_budget", config.accuracy_budget))
        if value is not None
    )
    ranking = fallback.ranking  # empty when the first conversion met the targets: no search, no table
    damage = {d.node: d for d in ranking}
    for name in fallback.kept:
        measured = {k: v for k, v in damage[name].as_row().items() if k not in ("node", "op_type")}
        kept[name] = {"reason": f"fidelity target ({targets})", **measured}
    return fallback.model, {
        "fidelity_targets": targets,
        "fidelity_search": tried,
        "sensitivity": [d.as_row() | {"kept_in_float": d.node in fallback.kept} for d in ranking[:SENSITIVITY_ROWS]],
    }


def _budget_evaluator(original: onnx.ModelProto, context: PassContext, batch: int) -> Evaluator:
    """What measures the recipe's metric drop of a candidate model on the evaluation data, against the model the
    recipe started from (``original``, the pass's input, where the pass runs alone): prune-auto's int8 had measured
    its drop against the pruned model, and 8 of the 47 corpus models then failed the recipe's own 1-point gate
    (1.03-2.1)."""
    if context.pipeline_input is not None:
        original = context.pipeline_input
    return Evaluator(
        _session(original, context, "budget_reference"), context.dataset, input_specs(original), context.metric, batch
    )


def _drop(evaluator: Evaluator, model: onnx.ModelProto, context: PassContext) -> float:
    return evaluator(_session(model, context, "budget_candidate")).drop


def _session(model: onnx.ModelProto, context: PassContext, name: str) -> ort.InferenceSession:
    source = session_source(model, context.workdir, name)
    return ort.InferenceSession(source, sess_options=check_options(), providers=["CPUExecutionProvider"])


def all_kept_in_float(label: str, kinds: list[str]) -> NotApplicable:
    """The failure of a conversion whose fidelity targets kept every one of its candidates (of op types ``kinds``)
    in float: writing the model unchanged would pass for an optimization."""
    return NotApplicable(
        label,
        f"all {len(kinds)} {'/'.join(sorted(set(kinds)))} node(s) stayed in float, so the model would come out "
        "unchanged",
        hint="see kept_in_float in the report; check exclude",
    )


def int8_share(
    model: onnx.ModelProto, result: onnx.ModelProto, readers: frozenset[str] | None = None
) -> tuple[float, dict[str, int]]:
    """The share of ``model``'s float weight values (those read by ``readers`` op types, where given) that ``result``
    no longer stores in float, and the float values it leaves, by the op type reading them."""
    sizes = _float32_sizes(model)
    if readers is not None:
        read = {name for node in model.graph.node if node.op_type in readers for name in node.input}
        sizes = {name: size for name, size in sizes.items() if name in read}
    kept = {t.name for t in result.graph.initializer}
    left_by_op = _values_by_reader(result.graph, {name: size for name, size in sizes.items() if name in kept})
    total = sum(sizes.values())
    return (sum(size for name, size in sizes.items() if name not in kept) / total if total else 1.0), left_by_op


def refuse_no_smaller(
    model: onnx.ModelProto, result: onnx.ModelProto, label: str, what: str, hint: str | None = None
) -> None:
    """A compressing pass whose ``result`` stores nothing smaller than its input has nothing to offer, and written
    with exit 0 it would pass for an optimization: static int8 of an LSTM wake-word head came out larger than fp32
    and no faster, its fp16 and 4-bit models 0.1-0.2 % larger, a kNN's fp16 17 % larger. Refused, naming what reads
    the float32 weights left."""
    before, after = serialized_size(model), serialized_size(result)
    if after < before:
        return
    readers = largest_readers(float_weights_by_reader(result))
    raise NotApplicable(
        label,
        f"the {what} model would be no smaller than its input ({human_bytes(before)} → {human_bytes(after)}): "
        + (f"its float32 weights left are read by {readers}" if readers else "it holds almost no weights to shrink"),
        hint=hint,
    )


def float_weights_by_reader(model: onnx.ModelProto) -> dict[str, int]:
    """How many float32 weight values ``model`` holds, by the op type reading them."""
    return _values_by_reader(model.graph, _float32_sizes(model))


def _float32_sizes(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}


def _values_by_reader(graph: onnx.GraphProto, sizes: dict[str, int]) -> dict[str, int]:
    """The values of the tensors in ``sizes`` (name -> value count), summed by the op type of each node reading them."""
    by_op: dict[str, int] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            if name in sizes:
                by_op[node.op_type] = by_op.get(node.op_type, 0) + sizes[name]
    return by_op


def largest_readers(left_by_op: dict[str, int]) -> str:
    """ "Conv 80%, MatMul 20%": the op types reading the most float weight values left."""
    total = sum(left_by_op.values()) or 1
    largest = sorted(left_by_op.items(), key=lambda item: -item[1])[:3]
    return ", ".join(f"{op} {size / total:.0%}" for op, size in largest if size / total >= 0.01)
