"""merge_slices: a Slice of a Slice along other axes becomes one Slice.

YOLOX's Focus stem (and space-to-depth blocks like it) takes every second row, then every second column, as two
Slices in a row; one Slice with both axes does the same. The first Slice goes only when every reader of it is such a
Slice, so no work is repeated.
"""

from __future__ import annotations

import numpy as np
import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, copy_model, is_standard

PARTS = ("starts", "ends", "axes", "steps")


@rewrite("merge_slices", "a Slice of a Slice along other axes merged into one")
def merge_slices(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    touched: set[str] = set()
    for first in list(model.graph.node):
        output = first.output[0] if first.output else ""
        outer = _parameters(first, index)
        readers = index.consumers.get(output, [])
        if outer is None or not readers or output in index.graph_outputs or touched & {first.input[0], output}:
            continue
        inner = [_parameters(r, index) if r.input[0] == output and output not in r.input[1:] else None for r in readers]
        if any(p is None or set(p[2].tolist()) & set(outer[2].tolist()) for p in inner):
            continue
        for reader, parameters in zip(readers, inner, strict=True):
            merged = [np.concatenate([a, b]) for a, b in zip(outer, parameters, strict=True)]
            base = reader.name or reader.output[0]
            names = [index.add_initializer(f"{base}.{part}", value) for part, value in zip(PARTS, merged, strict=True)]
            del reader.input[:]
            reader.input.extend([first.input[0], *names])
            touched.update(reader.output)
        model.graph.node.remove(first)
        touched.update([first.input[0], output])
        applied += 1
    return model, applied


def _parameters(node: onnx.NodeProto, index: GraphIndex) -> list[np.ndarray] | None:
    """Constant starts, ends, axes (non-negative) and steps of a Slice (opset 10+), or None."""
    if node.op_type != "Slice" or not is_standard(node) or len(node.input) < 3:
        return None
    starts, ends = index.const(node.input[1]), index.const(node.input[2])
    if starts is None or ends is None or starts.ndim != 1:
        return None
    axes = index.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
    steps = index.const(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(len(starts))
    if axes is None or steps is None or (axes < 0).any():
        return None
    return [np.asarray(v, np.int64).reshape(-1) for v in (starts, ends, axes, steps)]
