"""drop_identity: Identity and inference-mode Dropout pass their input through, so readers can read it directly.

A Dropout whose mask output is read, or whose training_mode is not a constant false, is kept. Graph outputs keep
their names (see ``GraphIndex.bypass``); an Identity from a graph input straight to a graph output must stay.
"""

from __future__ import annotations

import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, copy_model, is_standard


@rewrite("drop_identity", "Identity and inference Dropout removed")
def drop_identity(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    touched: set[str] = set()
    for node in list(model.graph.node):
        if not is_standard(node) or not _passes_through(node, index) or node.input[0] in touched:
            continue
        if index.bypass(node, node.input[0]):
            touched.update([node.input[0], node.output[0]])
            applied += 1
    return model, applied


def _passes_through(node: onnx.NodeProto, index: GraphIndex) -> bool:
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    mask_read = (
        len(node.output) > 1
        and node.output[1]
        and (node.output[1] in index.consumers or node.output[1] in index.graph_outputs)
    )
    if mask_read:
        return False
    if len(node.input) > 2 and node.input[2]:
        training = index.const(node.input[2])
        return training is not None and not bool(training)
    return True
