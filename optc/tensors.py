"""Initializers whose bytes stay in a file until something needs them ("lazy" tensors).

A lazy initializer is an ONNX external-data reference (location, offset, length) plus an entry of optc's own,
``SOURCE_KEY``, holding the absolute path of its file. ``tensor_values`` reads one without changing the model;
writers (``optc.modelio``) copy its bytes in chunks and write references of their own, so the entry never leaves
the process.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

from optc.errors import OptcError

SOURCE_KEY = "optc.source"
COPY_CHUNK = 64 * 2**20


def mark_lazy(tensor: onnx.TensorProto, source: Path) -> None:
    tensor.external_data.add(key=SOURCE_KEY, value=str(source))


def is_lazy(tensor: onnx.TensorProto) -> bool:
    return any(entry.key == SOURCE_KEY for entry in tensor.external_data)


def has_lazy_tensors(model: onnx.ModelProto) -> bool:
    return any(is_lazy(t) for t in model.graph.initializer)


def lazy_source(tensor: onnx.TensorProto) -> tuple[Path, int, int]:
    entries = {e.key: e.value for e in tensor.external_data}
    return Path(entries[SOURCE_KEY]), int(entries["offset"]), int(entries["length"])


def _read_lazy_bytes(tensor: onnx.TensorProto) -> bytes:
    path, offset, length = lazy_source(tensor)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def tensor_values(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's values, read from disk for a lazy initializer (the model is not changed)."""
    if not is_lazy(tensor):
        return numpy_helper.to_array(tensor)
    if tensor.data_type in _PLAIN_TYPES:
        path, offset, length = lazy_source(tensor)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        values = np.fromfile(path, dtype=dtype, count=length // dtype.itemsize, offset=offset)
        return values.reshape(tuple(tensor.dims))
    return numpy_helper.to_array(_inline_copy(tensor))


_PLAIN_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32,
    onnx.TensorProto.UINT32,
    onnx.TensorProto.INT64,
    onnx.TensorProto.UINT64,
    onnx.TensorProto.BOOL,
}


def _inline_copy(tensor: onnx.TensorProto) -> onnx.TensorProto:
    copy = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    copy.raw_data = _read_lazy_bytes(tensor)
    return copy


def materialize(model: onnx.ModelProto) -> None:
    """Read every lazy initializer's bytes into ``model``: for code that needs the whole model in memory."""
    for index, tensor in enumerate(model.graph.initializer):
        if is_lazy(tensor):
            model.graph.initializer[index].CopyFrom(_inline_copy(tensor))


def spill(values: np.ndarray, name: str, store: Path) -> onnx.TensorProto:
    """A lazy initializer holding ``values``, whose bytes are appended to ``store`` (a scratch file in the work
    folder): a pass that rewrites the weights of a model kept on disk keeps its results on disk too."""
    tensor = numpy_helper.from_array(values, name)
    payload = tensor.raw_data
    tensor.ClearField("raw_data")
    with open(store, "ab") as f:
        offset = f.tell()
        f.write(payload)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", store.name), ("offset", str(offset)), ("length", str(len(payload)))):
        tensor.external_data.add(key=key, value=value)
    mark_lazy(tensor, store.resolve())
    return tensor


def copy_lazy_bytes(tensor: onnx.TensorProto, target: BinaryIO) -> int:
    """Append a lazy tensor's bytes to ``target`` in chunks; returns how many."""
    path, offset, length = lazy_source(tensor)
    with open(path, "rb") as source:
        source.seek(offset)
        left = length
        while left:
            chunk = source.read(min(COPY_CHUNK, left))
            if not chunk:
                raise OptcError(f"{path}: ended before the {length} bytes of tensor {tensor.name!r}")
            target.write(chunk)
            left -= len(chunk)
    return length


def lazy_length(tensor: onnx.TensorProto) -> int:
    return lazy_source(tensor)[2]
