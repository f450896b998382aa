"""constant_reshape_targets: a Reshape whose target shape is computed at run time gets a constant one.

Exporters build head splits and merges as ``Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), 257, 6, 64))``. Shape
inference knows the result: every dim either a number, or the same symbolic dim the input has at that position
(written 0, "copy it", unless the Reshape has ``allowzero``, as PyTorch's dynamo exporter writes), or at most one
other (written -1, "whatever makes the size fit"). With that constant target
the whole Shape/Gather/Unsqueeze/Concat chain feeding it falls away (``drop_unused``).

Where inference gives no shape (paddle2onnx writes an unknown batch as ``dim_value: -1``), the target's own chain
is read instead: a Concat of constants and of leading dims of the Reshape's input taken by ``Slice(Shape(x))`` or
``Gather(Shape(x), i)`` at their own position (through Casts), as Paddle flattens ``[N, C, 1, 1]`` to ``[N, C]``.
"""

from __future__ import annotations

import numpy as np
import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, attribute, copy_model, is_standard


@rewrite("constant_reshape_targets", "run-time computed Reshape targets replaced by constants from inferred shapes")
def constant_reshape_targets(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or not is_standard(node) or index.const(node.input[1]) is not None:
            continue
        # With allowzero a 0 means a zero-sized dim, not "copy": the one symbolic dim can still be -1.
        copy = not attribute(node, "allowzero", 0)
        target = _target(index.shape(node.input[0]), index.shape(node.output[0]), copy)
        if target is None and copy:
            target = _traced_target(node, index)
        if target is None:
            continue
        node.input[1] = index.add_initializer(f"{node.name or node.output[0]}.shape", np.array(target, np.int64))
        applied += 1
    return model, applied


def _target(source: list | None, result: list | None, copy: bool) -> list[int] | None:
    if source is None or result is None:
        return None
    target, inferred = [], 0
    for position, dim in enumerate(result):
        if isinstance(dim, int) and dim > 0:
            target.append(dim)
        elif copy and isinstance(dim, str) and position < len(source) and source[position] == dim:
            target.append(0)
        else:
            inferred += 1
            target.append(-1)
    return target if inferred <= 1 else None


def _traced_target(reshape: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """The target read off its Concat: constants as they are, dims of the Reshape's own input copied (0) where they
    land at their own position; None for anything else, or for more than one -1."""
    concat = index.producers.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or not is_standard(concat):
        return None
    target: list[int] = []
    for part in concat.input:
        values = _target_part(part, reshape.input[0], len(target), index)
        if values is None:
            return None
        target += values
    return target if target.count(-1) <= 1 else None


def _through_casts(name: str, index: GraphIndex) -> tuple[str, onnx.NodeProto | None]:
    node = index.producers.get(name)
    while node is not None and node.op_type == "Cast" and is_standard(node):
        name, node = node.input[0], index.producers.get(node.input[0])
    return name, node


def _target_part(name: str, data: str, position: int, index: GraphIndex) -> list[int] | None:
    name, node = _through_casts(name, index)
    value = index.const(name)
    if value is not None:
        flat = [int(v) for v in np.asarray(value).reshape(-1)]
        return flat if all(v > 0 or v == -1 for v in flat) else None
    if node is None or not is_standard(node) or node.op_type not in ("Slice", "Gather"):
        return None
    shape = _through_casts(node.input[0], index)[1]
    if shape is None or shape.op_type != "Shape" or shape.input[0] != data or len(shape.attribute):
        return None
    if node.op_type == "Gather":
        at = index.const(node.input[1])
        return [0] if at is not None and at.size == 1 and int(at.reshape(-1)[0]) == position else None
    starts, ends, *rest = [index.const(n) if n else None for n in node.input[1:]] + [None, None]
    axes, steps = rest[0], rest[1]
    if starts is None or ends is None or starts.size != 1 or int(starts.reshape(-1)[0]) != position:
        return None
    if (axes is not None and int(axes.reshape(-1)[0]) != 0) or (steps is not None and int(steps.reshape(-1)[0]) != 1):
        return None
    count = int(ends.reshape(-1)[0]) - position
    return [0] * count if 0 < count <= 8 else None
