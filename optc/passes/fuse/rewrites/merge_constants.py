"""merge_constants: small initializers holding the same values are stored once.

Exporters write a fresh ``[0]`` or ``[2]`` for every Slice and Unsqueeze, so two nodes doing the same thing read
different constant names and ``merge_duplicates`` cannot see they are equal. Small initializers (the shapes, axes
and scalars of shape computations) with the same type, dims and values are merged into the first; weights are left
alone (comparing them would read every one from disk).
"""

from __future__ import annotations

import math

import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, copy_model
from optc.tensors import tensor_values

MAX_ELEMENTS = 64


@rewrite("merge_constants", "small initializers with equal values stored once")
def merge_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    pinned = {v.name for v in (*model.graph.input, *model.graph.output)}
    first: dict[tuple, str] = {}
    repeats: dict[str, str] = {}
    for tensor in model.graph.initializer:
        if tensor.name in pinned or math.prod(tensor.dims) > MAX_ELEMENTS:
            continue
        key = (tensor.data_type, tuple(tensor.dims), tensor_values(tensor).tobytes())
        kept = first.setdefault(key, tensor.name)
        if kept != tensor.name:
            repeats[tensor.name] = kept
    if not repeats:
        return model, 0
    model = copy_model(model)
    index = GraphIndex(model)
    for repeat, kept in repeats.items():
        index.rename_uses(repeat, kept)
    unused = [t for t in model.graph.initializer if t.name in repeats]
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    return model, len(repeats)
