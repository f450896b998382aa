"""merge_transposes: two back-to-back Transposes become one (or none, when together they permute nothing).

``Transpose(Transpose(x, p1), p2)`` reads ``x[p1[p2[i]]]`` along output axis i. The first Transpose must have no
other reader, or it would be computed anyway and nothing is saved.
"""

from __future__ import annotations

import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, attribute, copy_model, is_standard, set_attribute


@rewrite("merge_transposes", "back-to-back Transposes merged into one, or removed when they cancel")
def merge_transposes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    removed: set[str] = set()
    for second in list(model.graph.node):
        if second.op_type != "Transpose" or not is_standard(second) or second.output[0] in removed:
            continue
        first = index.producers.get(second.input[0])
        if first is None or first.op_type != "Transpose" or not is_standard(first) or first.output[0] in removed:
            continue
        if index.sole_consumer(first.output[0]) is not second:
            continue
        p1, p2 = _perm(first, index), _perm(second, index)
        if p1 is None or p2 is None or len(p1) != len(p2):
            continue
        merged = [p1[axis] for axis in p2]
        if merged == list(range(len(merged))):
            if not index.bypass(second, first.input[0]):
                continue
        else:
            second.input[0] = first.input[0]
            set_attribute(second, "perm", merged)
        model.graph.node.remove(first)
        removed.update([first.output[0], second.output[0]])
        applied += 1
    return model, applied


def _perm(node: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    perm = attribute(node, "perm")
    if perm is not None:
        return list(perm)
    shape = index.shape(node.input[0])  # no perm attribute means "reverse the axes", which needs the rank
    return list(reversed(range(len(shape)))) if shape is not None else None
