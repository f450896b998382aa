"""subgraph_constants: Constant nodes inside If/Loop/Scan bodies become initializers of that body.

The main graph's constants are folded by ``fold_constants``; a body keeps its ``Constant`` nodes (a wake-word model's
verifier branch has four), which ONNX Runtime runs as nodes on every call. As the body's own initializers they are
plain values, in the same scope.
"""

from __future__ import annotations

import onnx

from optc.model_facts import subgraphs
from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import copy_model


@rewrite("subgraph_constants", "Constant nodes in subgraphs turned into the subgraph's initializers")
def subgraph_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    if not any(subgraphs(node) for node in model.graph.node):
        return model, 0
    model = copy_model(model)
    applied = sum(_lift(body) for node in model.graph.node for body in subgraphs(node))
    return model, applied


def _lift(graph: onnx.GraphProto) -> int:
    lifted = 0
    for node in list(graph.node):
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            graph.node.remove(node)
            lifted += 1
    return lifted + sum(_lift(body) for node in graph.node for body in subgraphs(node))
