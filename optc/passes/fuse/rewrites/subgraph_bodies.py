"""simplify_subgraphs and inline_constant_if: the rewrites reach into If/Loop/Scan bodies, and an If whose condition
folded to a constant becomes the branch it always takes.

Exporters put real work in bodies: PyTorch's LSTM with optional state is an If over two copies of the cell's shape
handling, and Silero VAD keeps 230 of its 325 nodes in branches. Without this, fuse left those bodies as exported
(Silero VAD: 153 nodes where onnxslim leaves 73). Each body is simplified as a model of its own by the same driver
— what it reads from enclosing scopes enters as graph inputs, so nothing outside it is treated as constant — and its
nodes and initializers replace the old ones; its own inputs and outputs keep their names.

``fold_body_constants`` is the folding part alone, for the quantizers and fp16, which must not rewrite more than
they report but need a body's weights to be its initializers.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import helper

from optc.model_facts import node_reads, subgraphs
from optc.passes.fuse.driver import rewrite, rewrites, simplify
from optc.passes.fuse.graph import GraphIndex, copy_model, is_standard

FOLDING_REWRITES = ("fold_constants", "drop_unused")  # drop_unused: what a folded chain read goes too


@rewrite("simplify_subgraphs", "the same rewrites run inside If/Loop/Scan bodies")
def simplify_subgraphs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    return _in_bodies(model, _simplified)


def fold_body_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the constant expressions inside its bodies folded into their own initializers, and nothing
    else changed: what the quantizers need to see a body's weights as weights (Silero VAD builds each LSTM's weights
    in a branch from Constant nodes through Slice, Concat and Unsqueeze)."""
    return _in_bodies(model, _folded)[0]


def _simplified(standalone: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    simplified, counts = simplify(standalone)  # its own simplify_subgraphs reaches the bodies nested in it
    return simplified, sum(counts.values())


def _folded(standalone: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    folded, counts = simplify(standalone, skip=[name for name in rewrites() if name not in FOLDING_REWRITES])
    nested, applied = _in_bodies(folded, _folded)
    return nested, sum(counts.values()) + applied


def _in_bodies(
    model: onnx.ModelProto, run: Callable[[onnx.ModelProto], tuple[onnx.ModelProto, int]]
) -> tuple[onnx.ModelProto, int]:
    """``model`` with ``run`` applied to each body of its main graph's nodes, as a model of its own."""
    if not any(subgraphs(node) for node in model.graph.node):
        return model, 0
    model = copy_model(model)
    types = _known_types(model)
    applied = 0
    for node in model.graph.node:
        for body in subgraphs(node):
            applied += _rewrite_body(body, model, types, run)
    return model, applied


def _rewrite_body(
    body: onnx.GraphProto,
    model: onnx.ModelProto,
    types: dict[str, onnx.TypeProto],
    run: Callable[[onnx.ModelProto], tuple[onnx.ModelProto, int]],
) -> int:
    defined = {i.name for i in body.input} | {t.name for t in body.initializer}
    defined |= {name for node in body.node for name in node.output}
    outer = sorted(set().union(*(node_reads(n) for n in body.node)) | {o.name for o in body.output})
    outer = [name for name in outer if name and name not in defined]
    graph = onnx.GraphProto()
    graph.CopyFrom(body)
    for name in outer:
        value = onnx.ValueInfoProto(name=name)
        if name in types:
            value.type.CopyFrom(types[name])
        graph.input.append(value)
    standalone = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    simplified, applied = run(standalone)
    if applied:
        del body.node[:]
        body.node.extend(simplified.graph.node)
        del body.initializer[:]
        body.initializer.extend(simplified.graph.initializer)
        del body.value_info[:]
    return applied


def _known_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Types of the main graph's tensors, for the bodies' reads from it (a body's shape inference needs them)."""
    index = GraphIndex(model)
    names = {name for node in model.graph.node for name in node_reads(node)} | index.graph_inputs
    found = {}
    for name in names:
        elem_type, shape = index.elem_type(name), index.shape(name)
        if elem_type:
            found[name] = helper.make_tensor_type_proto(elem_type, shape)
    return found


@rewrite("inline_constant_if", "an If with a constant condition replaced by the branch it takes")
def inline_constant_if(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    for node in list(model.graph.node):
        if node.op_type != "If" or not is_standard(node):
            continue
        condition = index.const(node.input[0])
        if condition is None or condition.size != 1:
            continue
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if condition.item() else "else_branch"))
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        # ONNX forbids a body to reuse a name from an enclosing scope, so its names can move up as they are.
        spliced = [*branch.node] + [
            helper.make_node("Identity", [inner.name], [outer], name=f"{node.name or 'If'}_taken_{i}")
            for i, (inner, outer) in enumerate(zip(branch.output, node.output, strict=True))
            if outer
        ]
        for offset, moved in enumerate(spliced):
            model.graph.node.insert(position + offset, moved)
        model.graph.initializer.extend(branch.initializer)
        applied += 1
    return model, applied
