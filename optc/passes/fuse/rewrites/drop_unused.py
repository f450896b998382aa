"""drop_unused: nodes that no graph output depends on, and initializers no node reads, are removed.

Runs last in each sweep to collect what the other rewrites orphaned (a BatchNorm's old weights, the producer chain
of a folded shape). Real graph inputs are the model's interface and stay even when unused; type annotations
(value_info) of removed tensors go too, so they cannot contradict a later rewrite.
"""

from __future__ import annotations

import onnx

from optc.model_facts import node_reads
from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, copy_model


@rewrite("drop_unused", "nodes nothing reads and unused initializers removed")
def drop_unused(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    graph = model.graph
    index = GraphIndex(model)
    live_names = set(index.graph_outputs)
    live_nodes: set[int] = set()
    for position in reversed(range(len(graph.node))):  # nodes are topologically sorted: readers come later
        node = graph.node[position]
        if any(name in live_names for name in node.output):
            live_nodes.add(position)
            live_names.update(node_reads(node))
    dead = [node for position, node in enumerate(graph.node) if position not in live_nodes]
    for node in dead:
        graph.node.remove(node)
    unused = [t for t in graph.initializer if t.name not in live_names]
    for tensor in unused:
        graph.initializer.remove(tensor)
    unused_names = {t.name for t in unused}
    kept_inputs = [i for i in graph.input if i.name not in unused_names]  # IR < 4 lists initializers as inputs
    del graph.input[:]
    graph.input.extend(kept_inputs)
    existing = live_names | {o for n in graph.node for o in n.output}
    kept_info = [v for v in graph.value_info if v.name in existing]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return model, len(dead) + len(unused)
