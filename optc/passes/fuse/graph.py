"""A read-mostly index over one graph, and the few edits every rewrite needs.

Rewrites copy the model, build a ``GraphIndex`` over the copy, edit the copy through these helpers and return it;
the index is rebuilt on the next sweep rather than kept in step with every edit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from optc.model_facts import all_nodes, node_reads, subgraphs
from optc.model_facts import attribute as attribute  # the fuse rewrites read it from here
from optc.modelio import too_large_to_serialize
from optc.passes.ort_tools import in_scratch_folder, quiet_root_logger
from optc.tensors import tensor_values


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return result


def _subgraph_nodes(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    for graph in subgraphs(node):
        yield from all_nodes(graph)


def has_subgraph(node: onnx.NodeProto) -> bool:
    return bool(subgraphs(node))


class GraphIndex:
    """Producers, consumers, constants and (on demand) inferred shapes of a model's main graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producers: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.output:
                self.producers[name] = node
            for name in node_reads(node):
                self.consumers.setdefault(name, []).append(node)
        self.graph_inputs = {i.name for i in self.graph.input}
        self.graph_outputs = {o.name for o in self.graph.output}
        self._types: dict[bool, dict[str, onnx.TypeProto]] = {}  # by whether ONNX Runtime's symbolic inference ran
        self._names = set(self.producers) | set(self.initializers) | self.graph_inputs
        self._counter = itertools.count()

    # ------------------------------------------------------------------ questions

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output; None for anything computed or fed."""
        if name in self.initializers and name not in self.graph_inputs:
            return tensor_values(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = next((a for a in node.attribute if a.name == "value"), None)
            return numpy_helper.to_array(attr.t) if attr is not None else None
        return None

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node reading ``name``, when nothing else (graph outputs included) depends on it."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or name in self.graph_outputs:
            return None
        return users[0]

    def shape(self, name: str, symbolic: bool = True) -> list[int | str | None] | None:
        """Inferred shape: ints for fixed dims, str for symbolic ones, None for unknown; None if rank is unknown.
        ``symbolic=False`` where only fixed dims matter: onnx's own inference alone, whose symbolic dim names are not
        consistent through the graph, but which is cheap (ONNX Runtime's symbolic inference took 40 s a call on
        PP-OCRv4's text detector, most of it sympy expressions of its Resizes' output sizes)."""
        type_proto = self._inferred_types(symbolic).get(name)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            return None
        tensor_type = type_proto.tensor_type
        if not tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]

    def elem_type(self, name: str, symbolic: bool = True) -> int | None:
        """The element type; ``symbolic`` as for ``shape``."""
        if name in self.initializers:
            return self.initializers[name].data_type
        type_proto = self._inferred_types(symbolic).get(name)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            return None
        return type_proto.tensor_type.elem_type or None

    def _inferred_types(self, symbolic: bool) -> dict[str, onnx.TypeProto]:
        if symbolic not in self._types:
            types = self._types[symbolic] = {}
            known = list(self.graph.input) + list(self.graph.output) + list(self.graph.value_info)
            if not too_large_to_serialize(self.model):  # shape inference serializes the model in one piece
                inferred = _infer_shapes(self.model, symbolic)
                if inferred is not None:
                    known = list(inferred.graph.value_info) + list(inferred.graph.output) + known
            for value in known:
                if value.type.HasField("tensor_type") and value.name not in types:
                    types[value.name] = value.type
        return self._types[symbolic]

    # ------------------------------------------------------------------ edits

    def fresh_name(self, base: str) -> str:
        name = base
        while name in self._names:
            name = f"{base}_{next(self._counter)}"
        self._names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh_name(base)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    def rename_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` (subgraph bodies included) read ``new`` instead."""
        for node in self.consumers.get(old, []):
            for target in itertools.chain([node], _subgraph_nodes(node)):
                for i, name in enumerate(target.input):
                    if name == old:
                        target.input[i] = new

    def bypass(self, node: onnx.NodeProto, source: str) -> bool:
        """Remove ``node`` (one output) so its readers read ``source``; False when that would rename a graph output.

        When the node's output is a graph output, the graph keeps that name: the tensor ``source`` is renamed to it
        instead (see ``absorb``).
        """
        if node.output[0] in self.graph_outputs:
            return self.absorb(node, source)
        self.rename_uses(node.output[0], source)
        self.graph.node.remove(node)
        return True

    def absorb(self, node: onnx.NodeProto, source: str) -> bool:
        """Remove ``node`` (one output) and have the producer of ``source`` write ``node``'s output name instead.

        For rewrites where the producer now computes what ``node`` did (a folded BatchNorm): the value keeps the name
        the original graph gave it, so graph outputs stay put and tensors compared by name (``optc compare
        --per-tensor``) line up. Impossible when ``source`` is fed from outside, is itself a graph output, or comes
        from a node with subgraphs.
        """
        producer = self.producers.get(source)
        if producer is None or source in self.graph_outputs or has_subgraph(producer):
            return False
        output = node.output[0]
        self.rename_uses(source, output)
        for i, name in enumerate(producer.output):
            if name == source:
                producer.output[i] = output
        self.producers[output] = producer
        self.graph.node.remove(node)
        return True


def _infer_shapes(model: onnx.ModelProto, symbolic: bool) -> onnx.ModelProto | None:
    """The model with shapes inferred: with ``symbolic``, ONNX Runtime's symbolic inference first, whose dim names
    stay consistent through the graph (every tensor's batch dim is ``batch_size``, not a fresh ``unk__7`` per op), so
    dims can be matched by name; else onnx's own. None when neither works: shapes are an aid, and rewrites that need
    them skip."""
    if symbolic:
        try:
            with quiet_root_logger(), in_scratch_folder():  # where its scratch files land when shapes stay unknown
                return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception:  # noqa: BLE001 - it fails on ops it does not know; onnx's inference may still manage
            pass
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001
        return None


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(onnx.helper.make_attribute(name, value))


def is_standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")
