"""merge_reshapes: back-to-back reshaping ops collapse into one.

- A Reshape, Flatten, Squeeze or Unsqueeze feeding a Reshape is skipped: none of them moves data, so the Reshape
  can read the earlier tensor, as long as its target shape has no 0 ("copy this dim from the input"), whose meaning
  would change with the input.
- Two Unsqueezes with constant axes become one with the axes combined.

The earlier node must have no other reader.
"""

from __future__ import annotations

import numpy as np
import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, attribute, copy_model, is_standard

RESHAPING = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@rewrite("merge_reshapes", "back-to-back Reshape/Flatten/Squeeze/Unsqueeze chains collapsed")
def merge_reshapes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    removed: set[str] = set()
    for second in list(model.graph.node):
        if second.op_type not in ("Reshape", "Unsqueeze") or not is_standard(second):
            continue
        first = index.producers.get(second.input[0])
        if first is None or not is_standard(first) or first.op_type not in RESHAPING or first.output[0] in removed:
            continue
        if second.output[0] in removed or index.sole_consumer(first.output[0]) is not second:
            continue
        if second.op_type == "Reshape":
            merged = _reshape_absorbs(second, index)
        else:
            merged = first.op_type == "Unsqueeze" and _merge_unsqueezes(first, second, index)
        if not merged:
            continue
        second.input[0] = first.input[0]
        model.graph.node.remove(first)
        removed.update([first.output[0], second.output[0]])
        applied += 1
    return model, applied


def _reshape_absorbs(reshape: onnx.NodeProto, index: GraphIndex) -> bool:
    target = index.const(reshape.input[1])
    return target is not None and (attribute(reshape, "allowzero", 0) or not np.any(target == 0))


def _merge_unsqueezes(first: onnx.NodeProto, second: onnx.NodeProto, index: GraphIndex) -> bool:
    """Give ``second`` the axes of both (it then reads ``first``'s input); False if an axis list is not constant."""
    a1, a2 = _axes(first, index), _axes(second, index)
    if a1 is None or a2 is None:
        return False
    rank_in = None
    if any(a < 0 for a in a1 + a2):
        shape = index.shape(first.input[0])
        if shape is None:
            return False
        rank_in = len(shape)
    if rank_in is not None:
        a1 = [a % (rank_in + len(a1)) for a in a1]
        a2 = [a % (rank_in + len(a1) + len(a2)) for a in a2]
    # Axes of the intermediate tensor, in order, sit at the final positions that a2 did not take.
    final_rank_bound = max(a1 + a2) + len(a1) + len(a2) + 1
    kept_positions = [p for p in range(final_rank_bound) if p not in a2]
    merged = sorted(set(a2) | {kept_positions[a] for a in a1})
    if len(second.input) > 1:
        second.input[1] = index.add_initializer(f"{second.name or second.output[0]}.axes", np.array(merged, np.int64))
    else:
        del second.attribute[:]
        second.attribute.append(onnx.helper.make_attribute("axes", merged))
    return True


def _axes(node: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    if len(node.input) > 1:
        axes = index.const(node.input[1])
        return [int(a) for a in axes.reshape(-1)] if axes is not None else None
    axes = attribute(node, "axes")
    return list(axes) if axes is not None else None
