"""Reading and writing ONNX models safely.

Loading refuses files that are not models and external-data paths that leave the model's folder. Saving is atomic:
everything is written under a temporary name in the destination folder and renamed into place, so an interrupted or
failed run never leaves a partial file where a pipeline would pick it up.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, numpy_helper

from optc.errors import OptcError
from optc.model_check import check_model_structure

# Protobuf cannot serialize a message of 2 GiB or more; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 2**31 - 64 * 2**20
TEMP_PREFIX = ".optc-tmp-"


@dataclass(frozen=True)
class LoadedModel:
    model: onnx.ModelProto
    path: Path
    size_bytes: int  # the .onnx file plus any external data it references
    sha256: str


def load_model(path: Path) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise OptcError(f"{path}: no such file")
    if not path.is_file():
        raise OptcError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise OptcError(f"{path}: the file is empty, not an ONNX model")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise OptcError(
            f"{path}: not a readable ONNX model (protobuf parse failed: {_first_line(exc)})",
            hint="is the file truncated or in another format?",
        ) from exc
    _check_is_model(model, path)
    check_model_structure(model, path)
    external_files = _external_data_files(model, path.parent, path)
    if external_files:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError) as exc:
            raise OptcError(f"{path}: could not read its external data ({_first_line(exc)})") from exc
    size = path.stat().st_size + sum(f.stat().st_size for f in external_files)
    return LoadedModel(model=model, path=path, size_bytes=size, sha256=_sha256_of(path, external_files))


def _check_is_model(model: onnx.ModelProto, path: Path) -> None:
    if model.ir_version == 0 or not model.HasField("graph"):
        raise OptcError(f"{path}: parsed as protobuf but it is not an ONNX model (no IR version or graph)")
    if not model.opset_import:
        raise OptcError(f"{path}: the model declares no opset")
    if not model.graph.output:
        raise OptcError(f"{path}: the graph has no outputs, so there is nothing to compute or compare")
    if not model.graph.node:
        raise OptcError(f"{path}: the graph has no nodes")


def _external_data_files(model: onnx.ModelProto, base_dir: Path, model_path: Path) -> list[Path]:
    """Validate every external-data location and return the distinct files referenced."""
    base = base_dir.resolve()
    files: dict[Path, None] = {}
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = f"{model_path}: initializer {tensor.name!r} has external data location {location!r}"
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
        files[target] = None
    return list(files)


def _sha256_of(path: Path, extra: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in [path, *extra]:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by initializers (including those of subgraphs); cheap, no serialization."""
    total = 0
    for t in external_data_helper._get_all_tensors(model):
        total += len(t.raw_data) or _typed_field_bytes(t)
    return total


def _typed_field_bytes(t: onnx.TensorProto) -> int:
    return 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (len(t.int64_data) + len(t.double_data))


def needs_external_data(model: onnx.ModelProto) -> bool:
    return tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def serialized_size(model: onnx.ModelProto) -> int:
    """Size in bytes the model would take on disk."""
    if needs_external_data(model):
        return tensor_bytes(model)
    return model.ByteSize()


def refuse_overwriting_input(output: Path, input_path: Path) -> None:
    if Path(output).resolve() == Path(input_path).resolve() or (
        Path(output).exists() and Path(input_path).exists() and os.path.samefile(output, input_path)
    ):
        raise OptcError(
            f"{output}: the output path is the input model; optc never overwrites its input",
            hint="choose another path with -o",
        )


@contextlib.contextmanager
def _staging_dir(dest: Path) -> Iterator[Path]:
    """A temporary folder beside ``dest`` (same filesystem, so renames are atomic), always removed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=dest.parent))
    try:
        yield staging
    finally:
        for p in staging.iterdir():
            p.unlink(missing_ok=True)
        staging.rmdir()


def save_model(model: onnx.ModelProto, dest: Path) -> int:
    """Write ``model`` to ``dest`` atomically; returns the bytes written (model plus external data).

    Models too large for one protobuf are written with their weights in ``<dest>.data`` beside it.
    """
    dest = Path(dest)
    with _staging_dir(dest) as staging:
        staged = staging / dest.name
        if needs_external_data(model):
            data_name = dest.name + ".data"
            write_with_external_data(model, staged, data_name)
            written = [staging / data_name, staged]
        else:
            _write_and_sync(staged, model.SerializeToString())
            written = [staged]
        total = sum(p.stat().st_size for p in written)
        for p in written:  # data first, so the model never points at data that is not there yet
            os.replace(p, dest.parent / p.name)
    _fsync_dir(dest.parent)
    return total


def write_with_external_data(model: onnx.ModelProto, path: Path, location: str) -> None:
    """Save with every top-graph initializer of 1 kB or more in ``path.parent / location``; ``model`` is not touched.

    onnx's own writer moves tensor bytes out of the in-memory model, and putting them back grows the protobuf's
    arena by the model's whole size each time (it only frees on destruction). Instead the model file is written from
    a skeleton that holds references to the data file, and the bytes are streamed from the tensors as they are.
    """
    path = Path(path)
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    with open(path.parent / location, "wb") as data:
        for tensor in model.graph.initializer:
            payload = _tensor_payload(tensor)
            if payload is None:
                skeleton.graph.initializer.append(tensor)
                continue
            entry = skeleton.graph.initializer.add()
            entry.name, entry.data_type = tensor.name, tensor.data_type
            entry.dims.extend(tensor.dims)
            entry.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", str(data.tell())), ("length", str(len(payload)))):
                entry.external_data.add(key=key, value=value)
            data.write(payload)
        data.flush()
        os.fsync(data.fileno())
    _write_and_sync(path, skeleton.SerializeToString())


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


def write_text_atomic(dest: Path, text: str) -> None:
    dest = Path(dest)
    with _staging_dir(dest) as staging:
        staged = staging / dest.name
        _write_and_sync(staged, text.encode("utf-8"))
        os.replace(staged, dest)


def _write_and_sync(path: Path, payload: bytes) -> None:
    with open(path, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
