"""Input data for evaluation and calibration: ``.npz`` files, folders of them, or seeded synthetic inputs.

Arrays are named after the model's inputs and stacked on their first axis (samples); an optional ``labels`` array
holds class indices. When an array has the same rank as the model input, its first axis is the model's batch axis;
when it has one more, each sample is fed as-is.
"""

from __future__ import annotations

import contextlib
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from optc.errors import OptcError
from optc.model_facts import graph_inputs

LABELS_KEY = "labels"
SYNTHETIC_SAMPLES = 32
SYNTHETIC_INT_HIGH = 10  # integer inputs that feed no lookup table are drawn from [0, 10)


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # ints are fixed dims; str/None are symbolic

    @property
    def batch_is_symbolic(self) -> bool:
        return bool(self.shape) and not isinstance(self.shape[0], int)


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    specs = []
    for value in graph_inputs(model):
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(name=value.name, dtype=dtype, shape=dims))
    return specs


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]  # first axis = samples
    labels: np.ndarray | None
    source: str  # a path, or "synthetic"
    per_sample: bool = False  # arrays carry one extra leading axis; each sample is fed as-is

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        if self.per_sample:
            for i in range(len(self)):
                yield {name: array[i] for name, array in self.inputs.items()}
            return
        for start in range(0, len(self), batch_size):
            yield {name: array[start : start + batch_size] for name, array in self.inputs.items()}

    def feed_batch_size(self, specs: list[InputSpec], wanted: int) -> int:
        """The batch size the model can take: ``wanted`` when its batch axis is symbolic, else the fixed one."""
        fixed = [s.shape[0] for s in specs if not s.batch_is_symbolic and s.shape]
        return int(fixed[0]) if fixed else wanted

    def first_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of exactly ``batch_size`` samples (repeating samples if there are fewer), for timing."""
        if self.per_sample:
            return {name: array[0] for name, array in self.inputs.items()}
        reps = -(-batch_size // len(self))
        return {name: np.concatenate([array] * reps)[:batch_size] for name, array in self.inputs.items()}


def load_dataset(path: Path, specs: list[InputSpec], samples: int | None = None) -> Dataset:
    """Read an ``.npz`` file or a folder of ``.npz``/``.npy`` files and check it against the model inputs."""
    path = Path(path)
    if not path.exists():
        raise OptcError(f"{path}: no such data file or folder")
    arrays = _read_folder(path) if path.is_dir() else _read_npz(path)
    labels = arrays.pop(LABELS_KEY, None)
    inputs = _check_against_specs(arrays, specs, path)
    counts = {name: len(a) for name, a in inputs.items()}
    if labels is not None:
        counts[LABELS_KEY] = len(labels)
    if len(set(counts.values())) != 1:
        raise OptcError(f"{path}: arrays disagree on the number of samples: {counts}")
    if next(iter(counts.values())) == 0:
        raise OptcError(f"{path}: the data holds no samples")
    if labels is not None:
        labels = _check_labels(labels, path)
    per_sample = any(a.ndim == len(s.shape) + 1 for s in specs for n, a in inputs.items() if n == s.name)
    if samples is not None:
        inputs = {n: a[:samples] for n, a in inputs.items()}
        labels = labels[:samples] if labels is not None else None
    return Dataset(inputs=inputs, labels=labels, source=str(path), per_sample=per_sample)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise OptcError(f"{path}: not a readable .npz file ({exc})") from exc


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    files = sorted(folder.glob("*.npz")) + sorted(folder.glob("*.npy"))
    if not files:
        raise OptcError(f"{folder}: the folder holds no .npz or .npy files")
    for file in files:
        if file.suffix == ".npz":
            chunk = _read_npz(file)
        else:
            try:
                chunk = {file.stem: np.load(file, allow_pickle=False)}
            except (OSError, ValueError) as exc:
                raise OptcError(f"{file}: not a readable .npy file ({exc})") from exc
        for name, array in chunk.items():
            parts.setdefault(name, []).append(array)
    try:
        return {name: np.concatenate(chunks) for name, chunks in parts.items()}
    except ValueError as exc:
        raise OptcError(f"{folder}: the files' arrays cannot be stacked ({exc})") from exc


def _check_against_specs(arrays: dict[str, np.ndarray], specs: list[InputSpec], path: Path) -> dict[str, np.ndarray]:
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in names]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"no array for model input(s) {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"array(s) {', '.join(map(repr, extra))} match no model input")
        raise OptcError(
            f"{path}: {'; '.join(problems)}",
            hint=f"model inputs: {', '.join(names)} (plus optional '{LABELS_KEY}')",
        )
    checked = {}
    for spec in specs:
        array = arrays[spec.name]
        checked[spec.name] = _conform(array, spec, path)
    return checked


def _conform(array: np.ndarray, spec: InputSpec, path: Path) -> np.ndarray:
    where = f"{path}: array {spec.name!r}"
    if array.dtype.kind != spec.dtype.kind and not (array.dtype.kind in "iu" and spec.dtype.kind in "iu"):
        raise OptcError(f"{where} has dtype {array.dtype}, but the model input is {spec.dtype}")
    rank = len(spec.shape)
    if array.ndim == rank:
        dims_to_check = list(zip(array.shape[1:], spec.shape[1:], strict=True))
    elif array.ndim == rank + 1:
        dims_to_check = list(zip(array.shape[1:], spec.shape, strict=True))
    else:
        raise OptcError(
            f"{where} has shape {list(array.shape)}, but the model input has rank {rank} "
            f"(shape {list(spec.shape)}); expected samples on the first axis"
        )
    for got, want in dims_to_check:
        if isinstance(want, int) and want > 0 and got != want:
            raise OptcError(
                f"{where} has shape {list(array.shape)}, which does not fit the model input shape {list(spec.shape)}"
            )
    return array.astype(spec.dtype, copy=False)


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise OptcError(
            f"{path}: '{LABELS_KEY}' must be a 1-D array of integer class indices, got {labels.dtype} "
            f"with shape {list(labels.shape)}"
        )
    return labels.astype(np.int64)


def parse_input_shapes(values: list[str]) -> dict[str, tuple[int, ...]]:
    """``["input_ids=1x128"]`` -> ``{"input_ids": (1, 128)}``."""
    shapes = {}
    for value in values:
        match = re.fullmatch(r"([^=]+)=(\d+(?:x\d+)*)", value.strip())
        if not match:
            raise OptcError(f"--input-shape {value!r}: expected NAME=DIMxDIM..., e.g. input_ids=1x128")
        shapes[match.group(1)] = tuple(int(d) for d in match.group(2).split("x"))
    return shapes


def synthetic_dataset(
    model: onnx.ModelProto,
    specs: list[InputSpec],
    seed: int,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = SYNTHETIC_SAMPLES,
) -> Dataset:
    """Seeded random inputs: floats ~ N(0, 1), token ids within the embedding table, masks all ones."""
    input_shapes = input_shapes or {}
    unknown = [n for n in input_shapes if n not in {s.name for s in specs}]
    if unknown:
        raise OptcError(f"--input-shape names {', '.join(map(repr, unknown))}, which the model has no input for")
    rng = np.random.default_rng(seed)
    vocab = _lookup_table_sizes(model)
    # A model with a fixed batch dim cannot take stacked samples: then every sample is a whole batch.
    per_sample = any(not s.batch_is_symbolic for s in specs)
    inputs = {}
    for spec in specs:
        sample_shape = _sample_shape(spec, input_shapes.get(spec.name))
        shape = (samples, *sample_shape)
        if per_sample:
            batch = input_shapes[spec.name][0] if spec.name in input_shapes else spec.shape[0]
            shape = (samples, batch if isinstance(batch, int) and batch > 0 else 1, *sample_shape)
        if spec.dtype.kind == "f":
            array = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            array = rng.integers(0, 2, shape).astype(bool)
        elif "mask" in spec.name.lower():
            array = np.ones(shape, dtype=spec.dtype)
        elif "type" in spec.name.lower() and "token" in spec.name.lower():
            array = np.zeros(shape, dtype=spec.dtype)
        else:
            array = rng.integers(0, vocab.get(spec.name, SYNTHETIC_INT_HIGH), shape).astype(spec.dtype)
        inputs[spec.name] = array
    return Dataset(inputs=inputs, labels=None, source="synthetic", per_sample=per_sample)


def _sample_shape(spec: InputSpec, given: tuple[int, ...] | None) -> tuple[int, ...]:
    """Shape of one sample along the batch axis (the first dim is the batch and is filled by stacking)."""
    if given is not None:
        if len(given) != len(spec.shape):
            raise OptcError(
                f"--input-shape {spec.name}: {len(given)} dims given, the model input has {len(spec.shape)} "
                f"(shape {list(spec.shape)})"
            )
        return given[1:]
    if not spec.shape:
        raise OptcError(f"model input {spec.name!r} is a scalar; optc needs a batch axis to build inputs")
    dims = []
    for dim in spec.shape[1:]:
        if not isinstance(dim, int) or dim <= 0:
            raise OptcError(
                f"model input {spec.name!r} has shape {list(spec.shape)} with a symbolic dim {dim!r}",
                hint=f"set it with --input-shape {spec.name}=1x..., or give evaluation data",
            )
        dims.append(dim)
    return tuple(dims)


def _lookup_table_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """For integer graph inputs used as Gather indices: the number of rows of the table they index."""
    initializers = {t.name: t for t in model.graph.initializer}
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in initializers:
            rows = initializers[node.input[0]].dims[0]
            sizes[node.input[1]] = min(sizes.get(node.input[1], rows), rows)
    return sizes


# ------------------------------------------------------------------------------------------- streaming (calibration)


def stream_batches(
    path: Path, specs: list[InputSpec], batch_size: int, samples: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of at most ``batch_size`` samples read from an ``.npz`` file or a folder, without loading it whole.

    ``.npz`` members and ``.npy`` files are read row by row from their streams, so memory stays at one batch however
    many samples the data holds. ``samples`` caps how many are read; a ``labels`` array is ignored.
    Arrays with one more axis than the model input hold whole batches: each of their rows is fed as-is.
    """
    path = Path(path)
    if not path.exists():
        raise OptcError(f"{path}: no such data file or folder")
    remaining = samples
    for source, readers in _row_sources(path):
        readers.pop(LABELS_KEY, None)
        _check_against_specs({name: reader.empty for name, reader in readers.items()}, specs, source)
        counts = {name: reader.rows for name, reader in readers.items()}
        if len(set(counts.values())) != 1:
            raise OptcError(f"{source}: arrays disagree on the number of samples: {counts}")
        per_sample = any(readers[s.name].ndim == len(s.shape) + 1 for s in specs)
        step = 1 if per_sample else batch_size
        rows = next(iter(counts.values()))
        for start in range(0, rows, step):
            take = min(step, rows - start, remaining if remaining is not None else rows)
            if take == 0:
                return
            batch = {s.name: _conform(readers[s.name].read(take), s, source) for s in specs}
            yield {name: array[0] for name, array in batch.items()} if per_sample else batch
            if remaining is not None:
                remaining -= take


_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass
class _RowReader:
    """Sequential reads of rows (first-axis slices) from an array stored in a file."""

    stream: object  # a binary file object positioned at the data, or an array loaded whole
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int = 0

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def empty(self) -> np.ndarray:
        """A zero-row array of the right dtype and shape, for checking against the model inputs."""
        return np.empty((0, *self.shape[1:]), self.dtype)

    def read(self, count: int) -> np.ndarray:
        if isinstance(self.stream, np.ndarray):
            rows = np.array(self.stream[self.offset : self.offset + count])
        else:
            row_shape = self.shape[1:]
            nbytes = count * int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
            rows = np.frombuffer(self.stream.read(nbytes), dtype=self.dtype).reshape(count, *row_shape)
        self.offset += count
        return rows


def _row_sources(path: Path) -> Iterator[tuple[Path, dict[str, _RowReader]]]:
    """Per data file (one for an ``.npz``; all ``.npy`` files of a folder together): a row reader per array."""
    if not path.is_dir():
        yield from _npz_sources(path)
        return
    npz_files = sorted(path.glob("*.npz"))
    npy_files = sorted(path.glob("*.npy"))
    if not npz_files and not npy_files:
        raise OptcError(f"{path}: the folder holds no .npz or .npy files")
    for file in npz_files:
        yield from _npz_sources(file)
    if npy_files:
        # Read through plain file streams, not memory maps: mapped pages count as the process's memory, so a
        # mapped 600 MB calibration set would grow the peak with the number of samples.
        with contextlib.ExitStack() as open_files:
            readers = {}
            for file in npy_files:
                stream = open_files.enter_context(open(file, "rb"))
                readers[file.stem] = _row_reader(stream, f"{file}", lambda f=file: _load_npy(f))
            yield path, readers


def _load_npy(file: Path) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise OptcError(f"{file}: not a readable .npy file ({exc})") from exc


def _row_reader(stream, where: str, load_whole) -> _RowReader:
    """A reader positioned after the ``.npy`` header of ``stream``; arrays that cannot be read row by row (Fortran
    order, objects) are loaded whole with ``load_whole`` (that one array, still not every file's)."""
    try:
        version = np.lib.format.read_magic(stream)
        read_header = _NPY_HEADER_READERS.get(version)
        shape, fortran, dtype = read_header(stream) if read_header else ((), True, np.dtype(object))
    except ValueError as exc:
        raise OptcError(f"{where} is not a .npy array ({exc})") from exc
    if fortran or dtype.hasobject:
        whole = load_whole()
        return _RowReader(whole, whole.shape, whole.dtype)
    return _RowReader(stream, shape, dtype)


def _npz_sources(path: Path) -> Iterator[tuple[Path, dict[str, _RowReader]]]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise OptcError(f"{path}: not a readable .npz file ({exc})") from exc
    with archive:
        readers = {}
        for member in archive.namelist():
            name = member.removesuffix(".npy")
            readers[name] = _row_reader(
                archive.open(member), f"{path}: member {member!r}", lambda n=name: _read_npz(path)[n]
            )
        yield path, readers
