"""drop_noops: a Transpose with the identity permutation, a Cast to the type its input already has, a Reshape to
the shape its input already has, and adding or subtracting a constant zero or multiplying or dividing by a constant
one (``x * [1.0]``, ``x - 0``, which real exports leave after folding) are removed.

Whether a Reshape is a no-op comes from inferred shapes: each target dim must be 0 (copy) or equal the known input
dim, with at most one -1 left for the single dim not matched otherwise.
"""

from __future__ import annotations

import math

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
        source = _noop_source(node, index) if is_standard(node) and node.input else None
        if source is None or source in touched or node.output[0] in touched:
            continue
        if index.bypass(node, source):
            touched.update([source, node.output[0]])
            applied += 1
    return model, applied


def _noop_source(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """The input a no-op node passes through unchanged, or None."""
    if node.op_type in IDENTITY_CONSTANT:
        return _arithmetic_source(node, index)
    if node.op_type == "Transpose":
        perm = attribute(node, "perm")
        keeps = perm is not None and list(perm) == list(range(len(perm)))
    elif node.op_type == "Cast":
        source = index.elem_type(node.input[0])
        keeps = source is not None and source == attribute(node, "to")
    elif node.op_type == "Reshape":
        keeps = _reshape_keeps_shape(node, index)
    else:
        keeps = False
    return node.input[0] if keeps else None


# op -> (the constant that leaves the other operand as it is, whether that constant may come first)
IDENTITY_CONSTANT = {"Add": (0, True), "Sub": (0, False), "Mul": (1, True), "Div": (1, False)}


def _arithmetic_source(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """``x`` for ``x + 0``, ``0 + x``, ``x - 0``, ``x * 1``, ``1 * x`` and ``x / 1`` with a one-element constant that
    cannot broadcast ``x`` to a larger rank."""
    neutral, either_side = IDENTITY_CONSTANT[node.op_type]
    sides = [(1, 0), (0, 1)] if either_side else [(1, 0)]
    for constant_at, source_at in sides:
        stored = index.initializers.get(node.input[constant_at])
        if stored is not None and math.prod(stored.dims) != 1:
            continue  # a weight or bias: no need to read its values to know it is not one neutral element
        value = index.const(node.input[constant_at])
        source = node.input[source_at]
        if value is None or value.size != 1 or value.ravel()[0] != neutral:
            continue
        shape = index.shape(source) if value.ndim else None
        if value.ndim and (shape is None or len(shape) < value.ndim):
            continue
        return source  # the types match: ONNX requires both operands to have one type
    return None


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
