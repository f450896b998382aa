"""constant_reshape_targets: a Reshape whose target shape is computed at run time gets a constant one.

Exporters build head splits and merges as ``Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), 257, 6, 64))``. Shape
inference knows the result: every dim either a number, or the same symbolic dim the input has at that position
(written 0, "copy it", unless the Reshape has ``allowzero``, as PyTorch's dynamo exporter writes), or at most one
other (written -1, "whatever makes the size fit"). With that constant target
the whole Shape/Gather/Unsqueeze/Concat chain feeding it falls away (``drop_unused``).
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
