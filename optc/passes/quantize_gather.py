"""Dynamic int8 for embedding tables: a Gather from a constant float table reads int8 rows and dequantizes them.

Quantizing an encoder's MatMuls leaves its word embeddings — a third of a MiniLM's bytes — in float. Here the table
is stored in symmetric int8 with one scale per column (per hidden unit, where BERT-family embeddings keep their
outlier dimensions; on all-MiniLM-L6 per-column scales cost cosine 6e-5 of the final hidden states, per-row ones
2e-4), and ``Cast`` + ``Mul`` by the scales turn the gathered rows back into float: only the rows a call reads are
converted. Not ``DequantizeLinear``: ONNX Runtime's QDQ propagation moves it past a following Transpose by inserting
a QuantizeLinear/DequantizeLinear pair, whose per-axis QuantizeLinear took 0.13 of 0.84 ms on a GRU transliterator
(0.78× fp32 speed).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from optc.model_facts import attribute, reader_counts
from optc.passes.quantize_matmul_dynamic import quantized_weight

MIN_TABLE_ELEMENTS = 1024  # a smaller table (BERT's 2-row token types) saves fewer bytes than its new nodes take


def embedding_gathers(model: onnx.ModelProto) -> set[str]:
    """Names of the Gathers whose table int8 can store: a constant float32 [V, H] of at least MIN_TABLE_ELEMENTS
    gathered along rows by indices computed at run time, and read by nothing but such Gathers — a table shared with
    a MatMul (a tied language-model head) would keep its float copy beside the int8 one and grow the model."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    gathers: dict[str, list[str]] = {}
    for node in graph.node:
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        if (
            table is not None
            and table.data_type == TensorProto.FLOAT
            and len(table.dims) == 2
            and table.dims[0] * table.dims[1] >= MIN_TABLE_ELEMENTS
            and attribute(node, "axis", 0) in (0, -2)
            and node.input[1] not in initializers
        ):
            gathers.setdefault(table.name, []).append(node.name)
    readers = reader_counts(graph)
    return {name for table, names in gathers.items() if readers[table] == len(names) for name in names}


def quantize_gathers(model: onnx.ModelProto, nodes: set[str], per_channel: bool) -> onnx.ModelProto:
    """``model`` with the tables of the Gathers in ``nodes`` (from ``embedding_gathers``) stored in int8; a table
    some of whose Gathers are not in ``nodes`` stays float for all of them. A pure rewrite."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    initializers = {t.name: t for t in graph.initializer}
    readers = reader_counts(graph)
    chosen: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Gather" and node.name in nodes:
            chosen[node.input[0]] = chosen.get(node.input[0], 0) + 1
    tables = {name for name, count in chosen.items() if readers[name] == count}
    rebuilt: list[onnx.NodeProto] = []
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.name in nodes else None
        if table not in tables:
            rebuilt.append(node)
            continue
        codes, values = f"{node.output[0]}_gathered_codes", f"{node.output[0]}_gathered_codes_float"
        rebuilt += [
            helper.make_node("Gather", [f"{table}_quantized", node.input[1]], [codes], name=node.name, axis=0),
            helper.make_node("Cast", [codes], [values], name=f"{node.name}_cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [values, f"{table}_scale"], list(node.output), name=f"{node.name}_rescale"),
        ]
    del graph.node[:]
    graph.node.extend(rebuilt)
    added = [
        tensor
        for name in sorted(tables)
        # symmetric int8: zero points of 0 need no Sub
        for tensor in quantized_weight(initializers[name], None, "int8", per_channel, reduce_range=False)[:2]
    ]
    kept = [t for t in graph.initializer if t.name not in tables]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    return out


def int8_gathers(model: onnx.ModelProto) -> int:
    """How many Gathers of ``model`` read an int8 table."""
    tables = {t.name for t in model.graph.initializer if t.data_type == TensorProto.INT8}
    return sum(node.op_type == "Gather" and node.input[0] in tables for node in model.graph.node)
