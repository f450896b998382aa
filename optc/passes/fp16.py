"""``type: fp16``: float32 weights and compute converted to float16, for GPUs.

The conversion is ONNX Runtime's ``float16.convert_float_to_float16``; optc adds what makes its result safe to ship:

- BatchNormalization is folded into the preceding Conv in fp32 first (ONNX Runtime's basic graph optimization), so
  running variances beyond fp16's ±65504 disappear into the Conv weights; any node still reading an initializer out
  of fp16's range stays in fp32.
- Ops known to misbehave in fp16 (range/shape computations, Resize scales, reductions that overflow, ...) stay in fp32
  by default, and so do Casts to integer types (fp16 rounds the ids and counts they read above 2048); ``exclude``
  adds op types (the op block list) and nodes (the node block list).
- The converter leaves Cast chains behind between fp32 islands: dangling Casts, duplicate Casts of one tensor and
  fp32→fp16→fp32 round trips are removed (``tidy_casts``).
- The result is run against the fp32 model on up to 32 evaluation samples; while an output turns NaN/Inf or drifts
  beyond ``tolerance`` (relative L2 error ``||fp16 - fp32|| / ||fp32||`` per output, default 1 %), the nodes that
  lost the most precision are kept in fp32 (``fallback``), as few as possible; only if half the graph in
  fp32 does not do it is the pass refused.
- Recurrent cells and control flow (LSTM, GRU, RNN, Loop, Scan, If) stay in fp32, and models holding them are run
  in a child process, where a crash of ONNX Runtime becomes a message instead of killing optc.
- The weights of the nodes left in fp32 are stored in fp16 all the same, behind a ``Cast`` to fp32 that ONNX Runtime
  folds when it loads the model (``store_kept_weights_fp16``): the file halves, compute stays fp32. An LSTM
  wake-word head, whose weights are all LSTM, came out of the conversion 0.2 % larger than fp32, and four Thai
  segmenters at 0.72-0.76. Kept only where the outputs stay within ``tolerance``.
- Weights listed as graph inputs (IR < 4) are made constants first, as the quantizers do: the converter takes them
  for inputs and keeps them fp32 (a face detector came out no smaller).
- A conversion no smaller than its input (a graph of ai.onnx.ml operators with a few float constants, where the Casts
  outweigh what fp16 saves) is refused.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnxruntime.transformers import float16
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from pydantic import Field

from optc.data import input_specs
from optc.errors import OptcError
from optc.isolation import RISKY_OP_TYPES, NativeCrash, run_isolated
from optc.measure.providers import check_options
from optc.model_facts import FLOAT_TYPES, all_nodes, final_uses, graph_scopes, node_reads, subgraphs, topological_order
from optc.modelio import adopt_model, too_large_to_serialize
from optc.passes.exclude import ExcludeSpec, excluded_nodes
from optc.passes.fallback import keep_in_float_until, output_agreement, probe_of, rank_by_damage, run_outputs
from optc.passes.fuse.rewrites.subgraph_bodies import fold_body_constants
from optc.passes.ort_tools import inside, quiet_root_logger
from optc.passes.quantize import refuse_quantized
from optc.passes.quantize_fallback import refuse_no_smaller
from optc.passes.quantize_prepare import drop_initializer_inputs, name_unnamed_nodes
from optc.passes.registry import PassConfig, PassContext, PassOutcome, register
from optc.tensors import is_lazy, spill, tensor_values
from optc.verify import session_source

FP16_MAX = 65504.0
FP16_MIN_POSITIVE = 5.96e-08  # the converter's default: smaller magnitudes become this, not 0
# Beyond ONNX Runtime's default block list: sums and products over many elements overflow fp16, and Resize/Range
# compute coordinates that fp16 rounds visibly.
FP16_UNSAFE_OPS = sorted(
    set(DEFAULT_OP_BLOCK_LIST)
    | {"Resize", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceProd", "ReduceLogSumExp", "Einsum"}
    | RISKY_OP_TYPES
)
PROBE_SAMPLES = 32
MIN_FALLBACK_NODES = 8
# Weights of nodes left in fp32 that are stored in fp16 behind a Cast: what reads weights, and how large a weight must
# be for the bytes it saves to outweigh its Cast node.
WEIGHT_READERS = {"LSTM", "GRU", "RNN", "Conv", "ConvTranspose", "MatMul", "Gemm", "Gather"}
MIN_STORED_ELEMENTS = 512


class Fp16Config(PassConfig):
    type: Literal["fp16"]
    keep_io_types: bool = Field(
        default=True,
        description="Keep the model's float32 inputs and outputs (casts inside), so callers see no change.",
    )
    block_unsafe_ops: bool = Field(
        default=True,
        description=f"Keep ops that misbehave in fp16 in fp32: {', '.join(FP16_UNSAFE_OPS)}, and Casts to integer "
        "types.",
    )
    fold_batchnorm: bool = Field(
        default=True, description="Fold BatchNormalization into Conv in fp32 first (its variances can exceed fp16)."
    )
    tolerance: float = Field(
        default=0.01, gt=0, description="Largest relative L2 error of any output against fp32 on the sample inputs."
    )
    exclude: ExcludeSpec = Field(
        default_factory=ExcludeSpec, description="Nodes and op types to keep in fp32 (node and op block lists)."
    )

    def reads_lazy_weights(self) -> bool:
        return True

    def refuse_input(self, model: onnx.ModelProto, label: str) -> None:
        refuse_quantized(model, label)


@register(Fp16Config)
def run_fp16(model: onnx.ModelProto, config: Fp16Config, context: PassContext) -> PassOutcome:
    refuse_quantized(model, context.label)
    refuse_half_precision(model, context.label)
    excluded_nodes(model.graph, config.exclude, context.label)  # check the names against the user's graph
    # weights a body builds from Constant nodes become its initializers, which can be stored in fp16
    model = fold_body_constants(drop_initializer_inputs(model)[0])
    # Folding runs ONNX Runtime's other basic fusions too (MatMul+Add → Gemm under a new name), so it only runs where
    # there is a BatchNormalization to fold, and node names in exclude keep meaning what the user wrote.
    has_batchnorm = any(node.op_type == "BatchNormalization" for node in model.graph.node)
    source = name_unnamed_nodes(fold_in_fp32(model, context) if config.fold_batchnorm and has_batchnorm else model)
    blocked_ops = set(config.exclude.op_types) | (set(FP16_UNSAFE_OPS) if config.block_unsafe_ops else set())
    kept = {node.name: "exclude" for node in source.graph.node if node.name in set(config.exclude.nodes)}
    for node in source.graph.node:
        if node.op_type in blocked_ops:
            kept.setdefault(node.name, "exclude" if node.op_type in config.exclude.op_types else "unsafe in fp16")
    kept.update({name: reason for name, reason in out_of_range_nodes(source).items() if name not in kept})
    if config.block_unsafe_ops:
        kept.update({name: reason for name, reason in casts_to_integers(source).items() if name not in kept})
    patterns = ExcludeSpec(patterns=config.exclude.patterns)
    kept.update({n: "exclude" for n in excluded_nodes(source.graph, patterns, context.label) if n not in kept})

    bodies = {node.name: copy.deepcopy(list(node.attribute)) for node in source.graph.node if subgraphs(node)}

    def convert(block: set[str]) -> onnx.ModelProto:
        with quiet_root_logger(), inside(context.workdir), _shapes_from_dims():
            converted = convert_float_to_float16(
                copy.deepcopy(source),  # it edits the subgraphs of the model it is given
                keep_io_types=config.keep_io_types,
                # Its shape inference serializes the model in one piece, which protobuf cannot do past 2 GB.
                disable_shape_infer=too_large_to_serialize(source),
                op_block_list=sorted(blocked_ops),
                node_block_list=sorted(block),
            )
        converted = convert_lazy_weights(converted, source, context.workdir / "fp16_weights.data")
        return tidy_casts(restore_control_flow(converted, bodies))[0]

    risky = any(node.op_type in RISKY_OP_TYPES for node in all_nodes(source.graph))
    probe = probe_of(
        context.dataset.batches(context.dataset.feed_batch_size(input_specs(model), context.batch_size)), PROBE_SAMPLES
    )
    reference = run_outputs(model, probe, context.workdir)

    def outputs_of(candidate: onnx.ModelProto) -> dict[str, np.ndarray]:
        if risky:
            return run_isolated(context.label, run_outputs, candidate, probe, context.workdir)
        return run_outputs(candidate, probe, context.workdir)

    def acceptable(candidate: onnx.ModelProto) -> tuple[bool, dict]:
        facts = output_agreement(reference, outputs_of(candidate))
        return facts["max_relative_error"] <= config.tolerance, facts

    always = set(kept)
    for op_type in failing_op_types(source, blocked_ops, lambda names: convert(always | names), outputs_of):
        blocked_ops.add(op_type)
        for node in source.graph.node:
            if node.op_type == op_type:
                kept.setdefault(node.name, "ONNX Runtime fails or crashes running it in fp16 in this graph")
    first = convert(set(kept))

    limit = max(MIN_FALLBACK_NODES, len(source.graph.node) // 2)
    fallback = keep_in_float_until(
        convert,
        first,
        lambda: rank_by_damage(source, first, probe, context.workdir, lambda node: node.name not in kept),
        acceptable,
        set(kept),
        context.label,
        limit,
    )
    for name in fallback.kept:
        kept[name] = f"output error above tolerance {config.tolerance:g} without it"
    converted, removed = tidy_casts(fallback.model)
    converted = raw_fp16_weights(converted)
    excluded = {name for name, reason in kept.items() if reason == "exclude"}  # fp32 as the user asked, weights too
    result, stored = store_kept_weights_fp16(converted, context.workdir / "fp16_weights.data", excluded)
    facts = fallback.facts
    if stored:
        ok, stored_facts = acceptable(result)
        if ok:
            facts = stored_facts
        else:  # the fp32 nodes' weights were the ones that needed their precision
            result, stored = converted, []
    refuse_no_smaller(model, result, context.label, "fp16")
    ops = {n.name: n.op_type for n in source.graph.node}
    return PassOutcome(
        model=result,
        details={
            "tolerance": config.tolerance,
            "output_error": facts.get("max_relative_error"),
            "probe_samples": sum(len(next(iter(feed.values()))) for feed in probe),
            "casts_removed": removed,
            "fp32_weights_stored_fp16": stored,
            "fallback_search": fallback.tried,
            "kept_in_float": [
                {"node": name, "op_type": ops.get(name, "?"), "reason": reason} for name, reason in sorted(kept.items())
            ],
        },
    )


def refuse_half_precision(model: onnx.ModelProto, label: str) -> None:
    """A model whose weights are mostly float16 already has nothing to gain, and converting it again went wrong: two
    fp16 passes in a row (found by the recipe fuzzer) ended in ONNX Runtime's "two nodes with same node name
    (graph_output_cast0)", or searched for minutes for op types to keep in fp32 (fold_batchnorm off)."""
    counts = {TensorProto.FLOAT: 0, TensorProto.FLOAT16: 0}
    for tensor in model.graph.initializer:
        if tensor.data_type in counts:
            counts[tensor.data_type] += int(np.prod(tensor.dims))
    if counts[TensorProto.FLOAT16] > counts[TensorProto.FLOAT]:
        raise OptcError(
            f"{label}: the model is already float16 ({counts[TensorProto.FLOAT16]:,} of its weight values, "
            f"{counts[TensorProto.FLOAT]:,} float32); converting it again has nothing to gain",
            hint="start from the float32 model",
        )


def store_kept_weights_fp16(
    model: onnx.ModelProto, store: Path, excluded: set[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with each float32 weight that only nodes left in fp32 read (recurrent cells, convolutions, MatMul/
    Gemm, embedding tables) stored as float16 behind a Cast back to float32 under its own name, and those weights'
    names. ONNX Runtime folds a Cast of a constant when it loads the model, so the session computes exactly what it
    did with fp32 weights rounded to fp16; the file holds half the bytes. Weights of fewer than
    ``MIN_STORED_ELEMENTS``, non-finite or beyond fp16's range, read anywhere else (at any depth of subgraphs) or by
    a node in ``excluded`` stay as they are. A pure rewrite, but for the bytes of weights on disk appended to
    ``store``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    chosen = [
        name for graph, _ in reversed(list(graph_scopes(out.graph))) for name in _store_fp16_in(graph, store, excluded)
    ]
    return (out, sorted(chosen)) if chosen else (model, [])


def _store_fp16_in(graph: onnx.GraphProto, store: Path, excluded: set[str]) -> list[str]:
    """``store_kept_weights_fp16`` on ``graph``'s own initializers, in place; the names of the weights stored."""

    # Reads inside If/Loop bodies count too: an openWakeWord head's verifier weights, half its bytes, sit in a branch;
    # tf2onnx hands an unrolled LSTM its weights through a Loop's state slots.
    cache: dict = {}

    def weight_only_read(name: str) -> bool:
        uses = final_uses(graph, name, cache=cache)
        return bool(uses) and all(
            use is not None
            and use[0].op_type in WEIGHT_READERS
            and use[0].name not in excluded
            and not (use[0].op_type == "Gather" and use[1] == 1)  # Gather's indices are no weight
            for use in uses
        )

    chosen: dict[str, onnx.TensorProto] = {}  # fp32 weight name -> its fp16 copy, on disk where it was
    for tensor in graph.initializer:
        name = tensor.name
        if tensor.data_type != TensorProto.FLOAT or not weight_only_read(name):
            continue
        if int(np.prod(tensor.dims)) < MIN_STORED_ELEMENTS:
            continue
        values = tensor_values(tensor)
        if np.isfinite(values).all() and np.abs(values).max() <= FP16_MAX:
            halves = float16.convert_np_to_float16(values, FP16_MIN_POSITIVE, FP16_MAX)
            stored = f"{name}_fp16"
            chosen[name] = spill(halves, stored, store) if is_lazy(tensor) else numpy_helper.from_array(halves, stored)
    if not chosen:
        return []
    kept = [t for t in graph.initializer if t.name not in chosen]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *chosen.values()])
    casts = [
        onnx.helper.make_node("Cast", [half.name], [name], name=f"{name}_to_fp32", to=TensorProto.FLOAT)
        for name, half in chosen.items()
    ]
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return list(chosen)


def raw_fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its float16 initializers held as raw bytes. The converter writes a weight it read from
    ``float_data`` (as skl2onnx stores them) into ``int32_data``, one varint of up to 3 bytes per value: five tabular
    MLPs came out of fp16 at 0.61-0.65 of their fp32 size instead of 0.5."""
    packed = [i for i, t in enumerate(model.graph.initializer) if t.data_type == TensorProto.FLOAT16 and t.int32_data]
    if not packed:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for index in packed:
        tensor = out.graph.initializer[index]
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    return out


@contextlib.contextmanager
def _shapes_from_dims() -> Iterator[None]:
    """The converter builds each converted weight's value_info by decoding the whole tensor to read its shape, which
    a weight still on disk (``optc.tensors``) cannot be; its dims say the same without reading anything."""
    decode = float16.make_value_info_from_tensor
    float16.make_value_info_from_tensor = _value_info_from_dims
    try:
        yield
    finally:
        float16.make_value_info_from_tensor = decode


def _value_info_from_dims(tensor: onnx.TensorProto) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))


def convert_lazy_weights(converted: onnx.ModelProto, source: onnx.ModelProto, store: Path) -> onnx.ModelProto:
    """The converter retypes a float32 weight still on disk to float16 without converting bytes it does not hold:
    convert those here, one at a time, with the converter's own clamping, into ``store`` on disk, so neither the
    fp32 nor the fp16 weights are ever all in memory."""
    was_float = {t.name for t in source.graph.initializer if t.data_type == TensorProto.FLOAT}
    for index, tensor in enumerate(converted.graph.initializer):
        if is_lazy(tensor) and tensor.data_type == TensorProto.FLOAT16 and tensor.name in was_float:
            as_stored = onnx.TensorProto()
            as_stored.CopyFrom(tensor)  # a reference: no weight bytes in memory
            as_stored.data_type = TensorProto.FLOAT
            values = float16.convert_np_to_float16(tensor_values(as_stored), FP16_MIN_POSITIVE, FP16_MAX)
            converted.graph.initializer[index].CopyFrom(spill(values, tensor.name, store))
    return converted


def restore_control_flow(converted: onnx.ModelProto, bodies: dict[str, list]) -> onnx.ModelProto:
    """Put back the fp32 bodies of If/Loop/Scan nodes (which stay fp32), and give them fp32 copies of the outer
    tensors they read that the conversion turned fp16.

    ONNX Runtime's converter rewrites subgraph outputs to fp16 even for a blocked node, so the branches of an If stop
    agreeing with each other and with the If; keeping control flow whole in fp32 is the reliable way through.
    """
    if not bodies:
        return converted
    types = _elem_types(converted)
    graph = converted.graph
    for position in reversed(range(len(graph.node))):
        node = graph.node[position]
        if node.name not in bodies:
            continue
        del node.attribute[:]
        node.attribute.extend(copy.deepcopy(bodies[node.name]))
        for name in sorted(node_reads(node) - set(node.input)):
            if types.get(name) != TensorProto.FLOAT16:
                continue
            copy_name = f"{name}_fp32_for_{node.name}"
            graph.node.insert(position, onnx.helper.make_node("Cast", [name], [copy_name], to=TensorProto.FLOAT))
            for body in subgraphs(node):
                _rename_reads(body, name, copy_name)
    return converted


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name == old:
                node.input[index] = new
        for body in subgraphs(node):
            _rename_reads(body, old, new)
    for output in graph.output:
        if output.name == old:  # a body passing the outer tensor straight through
            graph.node.append(onnx.helper.make_node("Identity", [new], [f"{old}_passed"]))
            output.name = f"{old}_passed"


def failing_op_types(
    source: onnx.ModelProto, blocked: set[str], convert: Callable[[set[str]], onnx.ModelProto], run: Callable
) -> list[str]:
    """Op types whose conversion to fp16 makes ONNX Runtime fail or crash on this graph (none when the full
    conversion runs). Found by converting one op type at a time: a second per op type, paid only by graphs that
    fail, where the alternative is no model at all."""
    if not _fails(run, convert(set())):
        return []
    present = sorted({n.op_type for n in source.graph.node} - blocked)
    found = []
    for op_type in present:
        others = {n.name for n in source.graph.node if n.op_type != op_type}
        if _fails(run, convert(others)):
            found.append(op_type)
    return found


def _fails(run: Callable, model: onnx.ModelProto) -> bool:
    try:
        run(model)
    except NativeCrash:
        return True
    except Exception:  # noqa: BLE001 - ONNX Runtime refusing to load or run the conversion is what is looked for
        return True
    return False


def fold_in_fp32(model: onnx.ModelProto, context: PassContext) -> onnx.ModelProto:
    """ONNX Runtime's basic graph optimization (constant folding, Conv+BatchNormalization fusion) written back."""
    target = context.workdir / "fp16_folded.onnx"
    options = check_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(session_source(model, context.workdir, "fp16_source"), options, ["CPUExecutionProvider"])
    return adopt_model(target)


def casts_to_integers(model: onnx.ModelProto) -> dict[str, str]:
    """Casts to an integer or bool type, whose float input is an index, a count or a mask: fp16 holds integers
    exactly only up to 2048. Three Thai segmenters take their character ids as float inputs and Cast them to int32
    for the embedding lookup; converted, the ids were rounded (relative error 2-13 % at the output), and keeping
    half the graph in fp32 did not help, since the damage shows in no float tensor a ranking compares."""
    return {
        node.name: "casts to an integer type: fp16 would round its input (ids, counts) above 2048"
        for node in model.graph.node
        if node.op_type == "Cast" and _cast_to(node) not in FLOAT_TYPES
    }


def out_of_range_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Nodes reading a float32 initializer with values beyond fp16's range, which conversion would clamp."""
    large = {
        t.name: float(np.abs(values).max())
        for t in model.graph.initializer
        if t.data_type == TensorProto.FLOAT and (values := tensor_values(t)).size and np.abs(values).max() > FP16_MAX
    }
    return {
        node.name: f"initializer {name!r} holds {large[name]:.4g}, beyond fp16's ±{FP16_MAX:g}"
        for node in model.graph.node
        for name in node.input
        if name in large
    }


def tidy_casts(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Remove dangling Casts, duplicate Casts of one tensor to one type, and X→fp16→fp32 round trips of fp32 X.

    Returns the model and how many Cast nodes went away.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    before = sum(1 for n in graph.node if n.op_type == "Cast")
    elem_types = _elem_types(out)
    protected = {o.name for o in graph.output}
    # What subgraphs read from outside is fixed here (only top-level inputs are renamed; a Cast only a subgraph reads
    # stays), keyed by outputs since the node messages are copied on every round.
    outer_reads = {tuple(n.output): node_reads(n) - set(n.input) for n in graph.node if subgraphs(n)}
    changed = True
    while changed:
        changed = False
        producers = {o: n for n in graph.node for o in n.output}
        seen: dict[tuple[str, int], str] = {}
        renames: dict[str, str] = {}
        for node in graph.node:
            if node.op_type != "Cast" or node.output[0] in protected:
                continue
            to = _cast_to(node)
            first = producers.get(node.input[0])
            if (
                first is not None
                and first.op_type == "Cast"
                and _cast_to(first) == TensorProto.FLOAT16
                and elem_types.get(first.input[0]) == to
            ):
                renames[node.output[0]] = first.input[0]  # an fp16 detour that only loses precision
            elif (node.input[0], to) in seen:
                renames[node.output[0]] = seen[(node.input[0], to)]
            else:
                seen[(node.input[0], to)] = node.output[0]
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in renames:
                    node.input[i] = renames[name]
                    changed = True
        consumed = {name for n in graph.node for name in n.input} | protected
        consumed |= set().union(*(outer_reads.get(tuple(n.output), set()) for n in graph.node))
        live = [n for n in graph.node if n.op_type != "Cast" or n.output[0] in consumed]
        if len(live) != len(graph.node):
            changed = True
            del graph.node[:]
            graph.node.extend(live)
    ordered = topological_order(graph)  # the converter appends input Casts last
    del graph.node[:]
    graph.node.extend(ordered)
    return out, before - sum(1 for n in graph.node if n.op_type == "Cast")


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Cast":
            types[node.output[0]] = _cast_to(node)
    return types
