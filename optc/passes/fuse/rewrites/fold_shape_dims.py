"""fold_shape_dims: a dim read out of a Shape that shape inference knows becomes a constant.

Exporters compute reshape targets at run time: ``Gather(Shape(x), 1)``, ``Slice(Shape(x), 2, 4)``, even when only
the batch dim of ``x`` is unknown. Where every dim the Gather or Slice picks is known, the result is a constant,
and the Unsqueeze/Concat/Reshape chains built on it fold away behind it (``fold_constants``).
"""

from __future__ import annotations

import numpy as np
import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, attribute, copy_model, is_standard


@rewrite("fold_shape_dims", "known dims picked out of a Shape (Gather/Slice of Shape) replaced by constants")
def fold_shape_dims(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    for node in list(model.graph.node):
        if node.op_type not in ("Gather", "Slice") or not is_standard(node) or node.output[0] in index.graph_outputs:
            continue
        shape_node = index.producers.get(node.input[0])
        if shape_node is None or shape_node.op_type != "Shape" or not is_standard(shape_node):
            continue
        dims = _shape_dims(shape_node, index)
        if dims is None:
            continue
        picked = _gathered(node, dims, index) if node.op_type == "Gather" else _sliced(node, dims, index)
        if picked is None or not all(isinstance(d, int) and d > 0 for d in np.asarray(picked, dtype=object).ravel()):
            continue
        value = np.asarray(picked, dtype=np.int64)
        model.graph.node.remove(node)
        model.graph.initializer.append(onnx.numpy_helper.from_array(value, node.output[0]))
        applied += 1
    return model, applied


def _shape_dims(shape_node: onnx.NodeProto, index: GraphIndex) -> list | None:
    """The dims the Shape node outputs (ints where known, other values where not); None if the rank is unknown."""
    shape = index.shape(shape_node.input[0])
    if shape is None:
        return None
    start, end = attribute(shape_node, "start", 0), attribute(shape_node, "end", len(shape))
    return list(shape[start:end])


def _gathered(node: onnx.NodeProto, dims: list, index: GraphIndex):
    indices = index.const(node.input[1])
    if indices is None or attribute(node, "axis", 0) != 0 or indices.dtype.kind not in "iu":
        return None
    if np.any(indices >= len(dims)) or np.any(indices < -len(dims)):
        return None
    return np.vectorize(lambda i: dims[int(i)], otypes=[object])(indices) if indices.ndim else dims[int(indices)]


def _sliced(node: onnx.NodeProto, dims: list, index: GraphIndex):
    bounds = [index.const(name) if name else None for name in node.input[1:]]
    if len(bounds) < 2 or bounds[0] is None or bounds[1] is None or bounds[0].size != 1 or bounds[1].size != 1:
        return None
    if len(bounds) > 2 and bounds[2] is not None and not np.all(bounds[2] == 0):
        return None  # axes other than 0
    step = int(bounds[3].ravel()[0]) if len(bounds) > 3 and bounds[3] is not None else 1
    start, end = int(bounds[0].ravel()[0]), int(bounds[1].ravel()[0])
    return dims[slice(start, end, step)]
