"""Graph-level pruning: keep only some graph outputs and drop every node, initializer and input that fed only the
others."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import onnx

from optc.model_facts import subgraphs


@dataclass
class OutputsPruned:
    model: onnx.ModelProto
    removed_outputs: list[str]
    removed_nodes: list[str]
    removed_inputs: list[str]
    removed_initializers: int


def keep_outputs(model: onnx.ModelProto, keep: list[str]) -> OutputsPruned:
    """The model with only the graph outputs named in ``keep`` (which must all exist) and what they need."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    needed = set(keep)
    kept_nodes = []
    removed_nodes = []
    for node in reversed(graph.node):  # nodes are topologically sorted, so one backward sweep finds every ancestor
        if any(name in needed for name in node.output):
            kept_nodes.append(node)
            needed.update(names_read(node))
        else:
            removed_nodes.append(node.name or f"<{node.op_type} writing {node.output[0]}>")
    kept_nodes.reverse()
    removed_outputs = [o.name for o in graph.output if o.name not in keep]
    removed_inputs = [i.name for i in graph.input if i.name not in needed]
    initializer_count = len(graph.initializer)
    _keep_only(graph.node, kept_nodes)
    _keep_only(graph.output, [o for o in graph.output if o.name in keep])
    _keep_only(graph.input, [i for i in graph.input if i.name in needed])
    _keep_only(graph.initializer, [t for t in graph.initializer if t.name in needed])
    _keep_only(graph.value_info, [v for v in graph.value_info if v.name in needed])
    return OutputsPruned(
        model=result,
        removed_outputs=removed_outputs,
        removed_nodes=list(reversed(removed_nodes)),
        removed_inputs=removed_inputs,
        removed_initializers=initializer_count - len(graph.initializer),
    )


def names_read(node: onnx.NodeProto) -> Iterator[str]:
    """Every tensor the node reads, including those its subgraphs (If/Loop bodies) take from the outer scope."""
    yield from (name for name in node.input if name)
    for subgraph in subgraphs(node):
        for inner in subgraph.node:
            yield from names_read(inner)


def _keep_only(container, items: list) -> None:
    kept = list(items)
    del container[:]
    container.extend(kept)
