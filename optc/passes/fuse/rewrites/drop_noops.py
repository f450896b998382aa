"""drop_noops: a Transpose with the identity permutation, a Cast to the type its input already has, and a Reshape to
the shape its input already has are removed.

Whether a Reshape is a no-op comes from inferred shapes: each target dim must be 0 (copy) or equal the known input
dim, with at most one -1 left for the single dim not matched otherwise.
"""

from __future__ import annotations

import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, attribute, copy_model, is_standard


@rewrite("drop_noops", "no-op Transpose/Cast/Reshape removed")
def drop_noops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    touched: set[str] = set()
    for node in list(model.graph.node):
        if not is_standard(node) or node.input[0] in touched or not _is_noop(node, index):
            continue
        if index.bypass(node, node.input[0]):
            touched.update([node.input[0], node.output[0]])
            applied += 1
    return model, applied


def _is_noop(node: onnx.NodeProto, index: GraphIndex) -> bool:
    if node.op_type == "Transpose":
        perm = attribute(node, "perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if node.op_type == "Cast":
        source = index.elem_type(node.input[0])
        return source is not None and source == attribute(node, "to")
    if node.op_type == "Reshape":
        return _reshape_keeps_shape(node, index)
    return False


def _reshape_keeps_shape(node: onnx.NodeProto, index: GraphIndex) -> bool:
    target = index.const(node.input[1])
    shape = index.shape(node.input[0])
    if target is None or shape is None or len(target) != len(shape):
        return False
    allow_zero = attribute(node, "allowzero", 0)
    unmatched = 0
    for wanted, have in zip(target.tolist(), shape, strict=True):
        if (wanted == 0 and not allow_zero) or (isinstance(have, int) and have > 0 and wanted == have):
            continue
        if wanted == -1:
            unmatched += 1
            continue
        return False
    return unmatched <= 1
