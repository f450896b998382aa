"""Structural checks on a loaded model, so that malformed or hostile graphs are refused with a message naming the
problem instead of failing somewhere deep inside ONNX Runtime or a pass.

Each check names the node, tensor or initializer at fault. They run on every model optc loads, before any pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from optc.errors import OptcError
from optc.model_facts import all_nodes, node_reads, subgraphs

# Domains whose ops ONNX Runtime implements; any other domain needs a custom-op library optc cannot load.
KNOWN_DOMAINS = {
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "com.microsoft",
    "com.microsoft.nchwc",
    "ai.onnx.training",
    "ai.onnx.preview.training",
    "com.ms.internal.nhwc",
}


def check_model_structure(model: onnx.ModelProto, path: Path) -> None:
    _check_names_are_text(model, path)
    _check_opsets(model, path)
    _check_graph(model.graph, path, outer_scope=[])
    _check_initializer_sizes(model, path)


def _check_names_are_text(model: onnx.ModelProto, path: Path) -> None:
    # Protobuf hands back bytes for string fields that are not valid UTF-8.
    for where, name in _all_names(model.graph):
        if not isinstance(name, str):
            raise OptcError(f"{path}: {where} has a name that is not valid UTF-8 ({name!r})")


def _all_names(graph: onnx.GraphProto) -> Iterable[tuple[str, object]]:
    for value in [*graph.input, *graph.output, *graph.value_info]:
        yield "a graph value", value.name
    for tensor in graph.initializer:
        yield "an initializer", tensor.name
    for node in graph.node:
        yield "a node", node.name
        yield "a node", node.op_type
        for name in [*node.input, *node.output]:
            yield f"node {node.name!r}'s input/output", name
        for sub in subgraphs(node):
            yield from _all_names(sub)


def _check_opsets(model: onnx.ModelProto, path: Path) -> None:
    supported = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > supported:
            raise OptcError(
                f"{path}: the model uses opset {opset.version}, newer than the {supported} this onnx supports",
                hint="upgrade onnx and onnxruntime, or export the model at a lower opset",
            )
    unknown = sorted({n.domain for n in all_nodes(model.graph)} - KNOWN_DOMAINS)
    if unknown:
        node = next(n for n in all_nodes(model.graph) if n.domain in unknown)
        raise OptcError(
            f"{path}: node {node.name!r} uses op {node.op_type!r} from custom domain {node.domain!r}, which neither "
            "ONNX nor ONNX Runtime implements",
            hint="optc cannot run models that need a custom-op library",
        )


def _check_graph(graph: onnx.GraphProto, path: Path, outer_scope: list[set[str]]) -> None:
    """Every tensor produced once, every input produced somewhere, and no cycles; in time linear in the graph.

    ``outer_scope`` holds the names visible from enclosing graphs (a chain of sets, not a copy per subgraph, so a
    model with many If/Loop bodies stays linear too).
    """
    input_names = {i.name for i in graph.input}
    local = input_names | {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    local.add("")
    producers: dict[str, str] = {}
    for node in graph.node:
        for out in node.output:
            if not out:
                continue
            if out in producers or out in input_names:
                raise OptcError(
                    f"{path}: tensor {out!r} is produced twice (by node {producers.get(out, 'graph input')!r} and "
                    f"node {node.name!r}); ONNX graphs must assign each tensor once"
                )
            producers[out] = node.name
    scope = [local, set(producers), *outer_scope]

    def visible(name: str) -> bool:
        return any(name in names for names in scope)

    nodes = list(graph.node)  # one wrapper per node: protobuf may hand out a new one on each access
    reads = [node_reads(node) for node in nodes]
    for node, names in zip(nodes, reads, strict=True):
        missing = next((name for name in names if not visible(name)), None)
        if missing is not None:
            raise OptcError(f"{path}: node {node.name!r} reads tensor {missing!r}, which nothing produces")
    for output in graph.output:
        if not visible(output.name):
            raise OptcError(f"{path}: graph output {output.name!r} is produced by no node")
    _check_acyclic(nodes, reads, producers, path)
    for node in nodes:
        for sub in subgraphs(node):
            _check_graph(sub, path, scope)


def _check_acyclic(nodes: list[onnx.NodeProto], reads: list[set[str]], producers: dict[str, str], path: Path) -> None:
    """Kahn's algorithm with in-degree counts; nodes never released sit on a cycle. Subgraph reads of names made
    in this graph count as edges too."""
    waiting_on: list[int] = []
    readers: dict[str, list[int]] = {}
    ready = []
    for position, names in enumerate(reads):
        made_here = {name for name in names if name in producers}
        waiting_on.append(len(made_here))
        for name in made_here:
            readers.setdefault(name, []).append(position)
        if not made_here:
            ready.append(position)
    released = 0
    while ready:
        position = ready.pop()
        released += 1
        for out in nodes[position].output:
            for reader in readers.get(out, ()):
                waiting_on[reader] -= 1
                if waiting_on[reader] == 0:
                    ready.append(reader)
    if released < len(nodes):
        stuck = [node for node, waiting in zip(nodes, waiting_on, strict=True) if waiting > 0]
        names = ", ".join(repr(n.name) for n in stuck[:5])
        raise OptcError(f"{path}: the graph has a cycle through node(s) {names}")


def _check_initializer_sizes(model: onnx.ModelProto, path: Path) -> None:
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor) or tensor.data_type == onnx.TensorProto.STRING:
            continue
        expected = int(np.prod(tensor.dims)) if tensor.dims else 1
        want = data_bytes(tensor, path)  # refuses an unknown data type
        if tensor.HasField("raw_data"):
            if len(tensor.raw_data) != want:
                raise OptcError(
                    f"{path}: initializer {tensor.name!r} has shape {list(tensor.dims)} ({expected} elements) but "
                    f"{len(tensor.raw_data)} bytes of data, not {want}"
                )
            continue
        stored = max(
            len(tensor.float_data),
            len(tensor.int32_data),
            len(tensor.int64_data),
            len(tensor.double_data),
            len(tensor.uint64_data),
        )
        if stored and stored != expected and not _packed_typed(tensor.data_type):
            raise OptcError(
                f"{path}: initializer {tensor.name!r} has shape {list(tensor.dims)} ({expected} elements) but holds "
                f"{stored} values"
            )


def data_bytes(tensor: onnx.TensorProto, path: Path) -> int:
    """Bytes of raw data a tensor of its shape and (fixed-width) type holds."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise OptcError(f"{path}: initializer {tensor.name!r} has unknown data type {tensor.data_type}") from None
    elements = int(np.prod(tensor.dims)) if tensor.dims else 1
    four_bit = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
    bits = 4 if tensor.data_type in four_bit else 8 * itemsize
    return (elements * bits + 7) // 8


def _packed_typed(data_type: int) -> bool:
    # complex values take two slots; 4-bit types pack two values per slot
    packed = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}
    packed |= {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
    return data_type in packed
