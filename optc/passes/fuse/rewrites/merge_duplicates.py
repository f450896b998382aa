"""merge_duplicates: nodes computing the same thing from the same inputs are computed once.

Exporters repeat ``Shape(x)``, ``Gather(shape, 0)`` and the like once per layer; identical nodes — same op, domain,
inputs and attributes, no subgraph — are merged into the first one, and readers of the others read its outputs.
Random ops are left alone: two draws are not one.
"""

from __future__ import annotations

import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, copy_model, has_subgraph
from optc.passes.fuse.rewrites.fold_constants import NOT_FOLDED


@rewrite("merge_duplicates", "nodes repeating the same computation on the same inputs merged into one")
def merge_duplicates(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    seen: dict[bytes, onnx.NodeProto] = {}
    applied = 0
    for node in list(model.graph.node):
        if has_subgraph(node) or node.op_type in NOT_FOLDED or any(o in index.graph_outputs for o in node.output):
            continue
        key = _signature(node)
        first = seen.setdefault(key, node)
        if first is node:
            continue
        for mine, theirs in zip(node.output, first.output, strict=True):
            if mine:
                index.rename_uses(mine, theirs)
        model.graph.node.remove(node)
        applied += 1
    return model, applied


def _signature(node: onnx.NodeProto) -> bytes:
    """The node without its name and outputs: equal signatures compute equal values."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.ClearField("name")
    copy.ClearField("output")
    copy.ClearField("doc_string")
    return copy.SerializeToString(deterministic=True) + str(len(node.output)).encode()
