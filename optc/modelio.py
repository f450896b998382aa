"""Reading and writing ONNX models safely, with weights that stay on disk until something changes them.

Loading refuses files that are not models and external-data paths that leave the model's folder. The weights of a
model that keeps them in external data are not read: each such initializer stays a reference (file, offset, length),
marked as optc's own with ``SOURCE_KEY``, and ``tensor_values`` reads one when a pass needs its values. A pass that
changes a weight stores the new one inline; a writer copies the untouched ones from their file in chunks. So a
multi-gigabyte model costs memory only for what a pass produces, and the protobuf never holds the whole model.

Writing goes to a path the caller chose (a staging folder: see ``optc.outputs``), with the weights in a data file
beside the model when it came with one or is too large for one protobuf.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from optc.errors import OptcError
from optc.messages import exception_reason
from optc.model_check import check_model_structure, data_bytes
from optc.model_facts import subgraphs
from optc.outputs import write_file
from optc.tensors import SOURCE_KEY, copy_lazy_bytes, has_lazy_tensors, is_lazy, lazy_length, mark_lazy

# Protobuf cannot serialize a message of 2 GiB or more; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 2**31 - 64 * 2**20
# External initializers smaller than this are read at load: shape tensors and biases, which code that reads values
# (shape inference, folding) may touch, for a memory saving too small to matter.
LAZY_MIN_BYTES = 64 * 2**10


@dataclass(frozen=True)
class LoadedModel:
    model: onnx.ModelProto
    path: Path
    size_bytes: int  # the .onnx file plus any external data it references
    sha256: str
    external_files: tuple[Path, ...] = ()  # the external-data files it references


def load_model(path: Path) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise OptcError(f"{path}: no such file")
    if not path.is_file():
        raise OptcError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise OptcError(f"{path}: the file is empty, not an ONNX model")
    try:
        model = onnx.load_model(str(path), format="protobuf", load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise OptcError(
            f"{path}: not a readable ONNX model (protobuf parse failed: {exception_reason(exc, limit=300)})",
            hint="is the file truncated or in another format?",
        ) from exc
    _check_is_model(model, path)
    check_model_structure(model, path)
    external_files = _external_data_files(model, path.parent, path)
    if external_files:
        try:
            _keep_initializers_on_disk(model, path.parent, path)
            _load_external_data(model, path.parent)
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise OptcError(f"{path}: could not read its external data ({exception_reason(exc, limit=300)})") from exc
    _densify_sparse_initializers(model)
    size = path.stat().st_size + sum(f.stat().st_size for f in external_files)
    return LoadedModel(
        model=model,
        path=path,
        size_bytes=size,
        sha256=sha256_of_files([path, *external_files]),
        external_files=tuple(external_files),
    )


def adopt_model(path: Path, rename: bool = True) -> onnx.ModelProto:
    """A model a tool wrote into the work folder, its weights left on disk. Its data files are renamed first (unless
    ``rename`` is false: the caller will not write ``path`` again), so a later run of the same tool, writing the same
    names, cannot change this model's weights under it."""
    path = Path(path)
    model = onnx.load_model(str(path), load_external_data=False)
    files = _external_data_files(model, path.parent, path)
    _keep_initializers_on_disk(model, path.parent, path)
    _load_external_data(model, path.parent)
    renamed = {str(file.resolve()): str(file.resolve()) for file in files}
    for file in files if rename else ():
        renamed[str(file.resolve())] = str(file.rename(file.with_name(f"{uuid.uuid4().hex}-{file.name}")).resolve())
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == SOURCE_KEY:
                entry.value = renamed[entry.value]
    return model


def _check_is_model(model: onnx.ModelProto, path: Path) -> None:
    if model.ir_version == 0 or not model.HasField("graph"):
        raise OptcError(f"{path}: parsed as protobuf but it is not an ONNX model (no IR version or graph)")
    if not model.opset_import:
        raise OptcError(f"{path}: the model declares no opset")
    if not model.graph.output:
        raise OptcError(f"{path}: the graph has no outputs, so there is nothing to compute or compare")
    if not model.graph.node:
        raise OptcError(f"{path}: the graph has no nodes")


def stored_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor the file stores: initializers and Constant values at any depth, and both halves of every
    sparse initializer (which onnx's own helpers leave out)."""
    tensors = list(external_data_helper._get_all_tensors(model))
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for sparse in graph.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
        graphs += [sub for node in graph.node for sub in subgraphs(node)]
    return tensors


def _densify_sparse_initializers(model: onnx.ModelProto) -> None:
    """Store sparse initializers densely: ONNX Runtime's quantizers and converters know only dense ones, and a
    weight that is mostly zeros compresses anyway once quantized or zipped."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for sparse in graph.sparse_initializer:
            values = numpy_helper.to_array(sparse.values)
            indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
            dense = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
            flat = indices if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), tuple(sparse.dims))
            dense[flat] = values
            graph.initializer.append(numpy_helper.from_array(dense.reshape(tuple(sparse.dims)), sparse.values.name))
        del graph.sparse_initializer[:]
        graphs += [sub for node in graph.node for sub in subgraphs(node)]


def _keep_initializers_on_disk(model: onnx.ModelProto, base_dir: Path, model_path: Path) -> None:
    """Mark the top graph's external initializers lazy, after checking that each one's bytes are in its file."""
    for tensor in model.graph.initializer:
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        source = (base_dir / info.location).resolve()
        size = source.stat().st_size
        offset = int(info.offset or 0)
        expected = None if tensor.data_type == onnx.TensorProto.STRING else data_bytes(tensor, model_path)
        length = int(info.length) if info.length else (size - offset if expected is None else expected)
        where = f"{model_path}: initializer {tensor.name!r}"
        if offset < 0 or length < 0 or offset + length > size:
            raise OptcError(f"{where} reads bytes {offset}..{offset + length} of {source.name}, which has {size}")
        if expected is not None and length != expected:
            raise OptcError(f"{where} has shape {list(tensor.dims)} ({expected} bytes) but {length} bytes of data")
        del tensor.external_data[:]
        for key, value in (("location", info.location), ("offset", str(offset)), ("length", str(length))):
            tensor.external_data.add(key=key, value=value)
        if length >= LAZY_MIN_BYTES:
            mark_lazy(tensor, source)


def _load_external_data(model: onnx.ModelProto, base_dir: Path) -> None:
    """Read the bytes of every external tensor that is not a lazy initializer (those of subgraphs, Constant nodes
    and sparse initializers: small, and read by code that knows nothing of lazy ones) into the model."""
    for tensor in stored_tensors(model):
        if external_data_helper.uses_external_data(tensor) and not is_lazy(tensor):
            external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def _external_data_files(model: onnx.ModelProto, base_dir: Path, model_path: Path) -> list[Path]:
    """Validate every external-data location and return the distinct files referenced."""
    base = base_dir.resolve()
    files: dict[Path, None] = {}
    for tensor in stored_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        locations = [e.value for e in tensor.external_data if e.key == "location"]
        location = locations[0] if locations else ""
        where = f"{model_path}: tensor {tensor.name!r} has external data location {location!r}"
        if len(locations) > 1:
            raise OptcError(f"{model_path}: tensor {tensor.name!r} names {len(locations)} external data locations")
        if not location:
            raise OptcError(f"{where}, which is empty")
        if os.path.isabs(location) or Path(location).is_absolute():
            raise OptcError(f"{where}, an absolute path", hint="external data must sit in the model's folder")
        if ".." in Path(location).parts:
            raise OptcError(f"{where}, which escapes the model's folder", hint="'..' is not allowed")
        target = base_dir / location
        if target.is_symlink() and not target.resolve().is_relative_to(base):
            raise OptcError(f"{where}, a symlink pointing outside the model's folder")
        if not target.resolve().is_relative_to(base):
            raise OptcError(f"{where}, which escapes the model's folder")
        if not target.is_file():
            raise OptcError(f"{where}, but that file does not exist")
        if target.stat().st_nlink > 1:
            raise OptcError(
                f"{where}, a file with {target.stat().st_nlink} hard links; onnx refuses to read those, since a hard "
                "link can bring in a file from anywhere",
                hint="copy the data file instead of linking it",
            )
        files[target] = None
    return list(files)


def sha256_of_files(paths: list[Path]) -> str:
    """One digest over the files' bytes in order (a model file, then its external data)."""
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def tensor_bytes(model: onnx.ModelProto, include_lazy: bool = True) -> int:
    """Bytes of the stored tensors (including those of subgraphs, and lazy ones on disk unless ``include_lazy`` is
    false); cheap, no serialization."""
    total = 0
    for t in stored_tensors(model):
        if is_lazy(t):
            total += lazy_length(t) if include_lazy else 0
        else:
            total += len(t.raw_data) or _typed_field_bytes(t)
    return total


def too_large_to_serialize(model: onnx.ModelProto) -> bool:
    """Whether ``SerializeToString`` would fail: the bytes held in memory (lazy tensors are references) pass 2 GB."""
    return tensor_bytes(model, include_lazy=False) >= EXTERNAL_DATA_THRESHOLD


def _typed_field_bytes(t: onnx.TensorProto) -> int:
    return 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data))


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether the model is written with its weights in a data file: it is too large for one protobuf, or its
    weights already sit in one (lazy: a model that came that way goes out that way, never read whole)."""
    return has_lazy_tensors(model) or tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def serialized_size(model: onnx.ModelProto) -> int:
    """Size in bytes the model would take on disk."""
    if needs_external_data(model):
        return tensor_bytes(model)
    return model.ByteSize()


def write_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Write ``model`` to ``path``; returns the files written (external data first, then the model).

    Models that need it (``needs_external_data``) get their weights in ``<path>.data`` beside it.
    """
    path = Path(path)
    if needs_external_data(model):
        data = path.with_name(path.name + ".data")
        write_with_external_data(model, path, data.name)
        return [data, path]
    write_file(path, model.SerializeToString())
    return [path]


def write_with_external_data(model: onnx.ModelProto, path: Path, location: str) -> None:
    """Save with every top-graph initializer of 1 kB or more in ``path.parent / location``; ``model`` is not touched.

    onnx's own writer moves tensor bytes out of the in-memory model, and putting them back grows the protobuf's
    arena by the model's whole size each time (it only frees on destruction). Instead the model file is written from
    a skeleton that holds references to the data file, and the bytes are streamed from the tensors as they are;
    lazy tensors are copied from their own files in chunks.
    """
    path = Path(path)
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    with open(path.parent / location, "wb") as data:
        for tensor in model.graph.initializer:
            payload = None if is_lazy(tensor) else _tensor_payload(tensor)
            if payload is None and not is_lazy(tensor):
                skeleton.graph.initializer.append(tensor)
                continue
            entry = skeleton.graph.initializer.add()
            entry.name, entry.data_type = tensor.name, tensor.data_type
            entry.dims.extend(tensor.dims)
            entry.data_location = onnx.TensorProto.EXTERNAL
            offset = data.tell()
            length = copy_lazy_bytes(tensor, data) if payload is None else data.write(payload)
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
                entry.external_data.add(key=key, value=value)
        data.flush()
        os.fsync(data.fileno())
    write_file(path, skeleton.SerializeToString())


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _tensor_payload(tensor: onnx.TensorProto) -> bytes | None:
    """The tensor's bytes in external-data layout, or None to keep it inline (small, or already external)."""
    if external_data_helper.uses_external_data(tensor) or tensor.data_type == onnx.TensorProto.STRING:
        return None
    payload = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
    return payload if len(payload) >= 1024 else None
