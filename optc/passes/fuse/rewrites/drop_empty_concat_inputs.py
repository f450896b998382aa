"""drop_empty_concat_inputs: Concat inputs that hold no values are dropped, and a Concat left with one input goes.

PyTorch exports of padding written as ``cat([x, zeros(batch, 0, 1)])`` (an EEG spindle detector) keep a
Shape/Gather/Unsqueeze/Concat/ConstantOfShape chain that builds an empty tensor only to append nothing. Inferred
shapes say which inputs have a zero-sized dim; the chain that built them then falls to ``drop_unused``.
"""

from __future__ import annotations

import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, copy_model, is_standard


@rewrite("drop_empty_concat_inputs", "empty Concat inputs dropped; a Concat of one input removed")
def drop_empty_concat_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    if not any(n.op_type == "Concat" for n in model.graph.node):
        return model, 0
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    for node in list(model.graph.node):
        if node.op_type != "Concat" or not is_standard(node):
            continue
        kept = [name for name in node.input if not _is_empty(index.shape(name, symbolic=False))]
        if not kept or len(kept) == len(node.input):
            continue
        if len(kept) == 1 and index.bypass(node, kept[0]):
            applied += 1
            continue
        del node.input[:]
        node.input.extend(kept)
        applied += 1
    return model, applied


def _is_empty(shape: list | None) -> bool:
    return shape is not None and any(dim == 0 for dim in shape)
