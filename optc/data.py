"""Input data for evaluation and calibration: ``.npz`` files, folders of them, or seeded synthetic inputs.

Arrays are named after the model's inputs and stacked on their first axis (samples); an optional ``labels`` array
holds class indices. When an array has the same rank as the model input, its first axis is the model's batch axis;
when it has one more, each sample is fed as-is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from optc.data_files import data_sources, first_non_finite, whole_load_budget
from optc.errors import OptcError
from optc.messages import quoted_list
from optc.model_facts import graph_inputs

LABELS_KEY = "labels"
SYNTHETIC_SAMPLES = 32
# Size of a symbolic non-batch dim (a sequence length, an image side) when neither data nor --input-shape gives one.
DEFAULT_SYMBOLIC_DIM = 32
MAX_SYNTHETIC_ELEMENTS = 1 << 28  # per sample of one input: a gigabyte of float32
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
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise OptcError(
                f"model input {value.name!r} is a {(kind or 'untyped').removesuffix('_type')}, not a tensor; optc "
                "feeds, calibrates and measures tensor inputs only"
            )
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
    assumed: dict[str, int] = field(default_factory=dict)  # symbolic dims sized by default (synthetic data only)

    @property
    def synthetic(self) -> bool:
        return self.source == "synthetic"

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        if self.per_sample:
            for i in range(len(self)):
                yield {name: np.asarray(array[i]) for name, array in self.inputs.items()}
            return
        for start in range(0, len(self), batch_size):
            yield {name: array[start : start + batch_size] for name, array in self.inputs.items()}

    def feed_batch_size(self, specs: list[InputSpec], wanted: int) -> int:
        """The batch size the model can take: ``wanted`` when its batch axis is symbolic, else the fixed one."""
        fixed = [s.shape[0] for s in specs if not s.batch_is_symbolic and s.shape]
        return int(fixed[0]) if fixed else wanted

    def check_labels_fit(self, outputs: dict[str, object]) -> None:
        """Refuse labels that are no class of the model's first output (``outputs``: the original's, by name)."""
        if self.labels is None or not self.labels.size or not outputs:
            return
        name, first = next(iter(outputs.items()))
        if not isinstance(first, np.ndarray) or first.ndim != 2:
            return  # not a classifier output; accuracy will say so
        classes = first.shape[1]
        if self.labels.max() >= classes:
            index = int(self.labels.argmax())
            raise OptcError(
                f"{self.source}: '{LABELS_KEY}' holds {int(self.labels.max())} at index {index}, but the model's "
                f"first output {name!r} has {classes} classes (0..{classes - 1})"
            )

    def head(self, samples: int) -> Dataset:
        """The first ``samples`` samples (all of them where there are fewer), labels included."""
        return replace(
            self,
            inputs={name: array[:samples] for name, array in self.inputs.items()},
            labels=None if self.labels is None else self.labels[:samples],
        )

    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of one feed of a single sample per input, as ``--input-shape`` gives it."""
        return {
            name: tuple(array.shape[1:]) if self.per_sample else (1, *array.shape[1:])
            for name, array in self.inputs.items()
        }

    def first_batch(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of exactly ``batch_size`` samples (repeating samples if there are fewer), for timing."""
        if self.per_sample:
            return {name: np.asarray(array[0]) for name, array in self.inputs.items()}
        reps = -(-batch_size // len(self))
        return {name: np.concatenate([array] * reps)[:batch_size] for name, array in self.inputs.items()}


def load_dataset(path: Path, specs: list[InputSpec], samples: int | None = None, role: str = "data") -> Dataset:
    """Read an ``.npz`` file or a folder of ``.npz``/``.npy`` files whole and check it against the model inputs.

    ``role`` names where the path came from (``--data``) in messages.
    """
    parts: dict[str, list[np.ndarray]] = {}
    budget = whole_load_budget()
    declared = 0
    for source, readers in data_sources(Path(path), role):
        labels_reader = readers.pop(LABELS_KEY, None)
        derived = _derivable(specs, set(readers))
        given_specs = [s for s in specs if s not in derived]
        _check_against_specs({name: reader.empty for name, reader in readers.items()}, given_specs, source)
        declared += sum(r.nbytes for r in readers.values()) + (labels_reader.nbytes if labels_reader else 0)
        if declared > budget:
            raise OptcError(
                f"{role} {path}: the arrays declare {declared:,} bytes, more than the {budget:,} optc loads at once "
                "(half the available memory)",
                hint="evaluate on fewer samples",
            )
        rows = {name: reader.rows for name, reader in readers.items()}
        if labels_reader is not None:
            rows[LABELS_KEY] = labels_reader.rows
            parts.setdefault(LABELS_KEY, []).append(_check_labels(labels_reader.read(labels_reader.rows), source))
        if len(set(rows.values())) != 1:
            raise OptcError(f"{source}: arrays disagree on the number of samples: {rows}")
        for spec in given_specs:
            reader = readers[spec.name]
            parts.setdefault(spec.name, []).append(_conform(reader.read(reader.rows), spec, reader.where, 0))
    labels_parts = parts.pop(LABELS_KEY, None)
    try:
        inputs = {name: np.concatenate(chunks) for name, chunks in parts.items()}
    except ValueError as exc:
        raise OptcError(f"{role} {path}: the files' arrays cannot be stacked ({exc})") from exc
    labels = np.concatenate(labels_parts) if labels_parts else None
    inputs.update(_derived_inputs(derived, inputs))
    if inputs and len(next(iter(inputs.values()))) == 0:
        raise OptcError(f"{role} {path}: the data holds no samples")
    per_sample = any(inputs[s.name].ndim == len(s.shape) + 1 for s in specs)
    if samples is not None:
        inputs = {n: a[:samples] for n, a in inputs.items()}
        labels = labels[:samples] if labels is not None else None
    return Dataset(inputs=inputs, labels=labels, source=str(path), per_sample=per_sample)


def _derivable(specs: list[InputSpec], given: set[str]) -> list[InputSpec]:
    """Decoder inputs a data file may leave out because they follow from ``input_ids``: the attention mask (all
    ones), position ids (0, 1, ...) and an empty KV cache — token sequences alone are evaluation data for an LLM."""
    if "input_ids" not in given or not any("past" in s.name.lower() for s in specs):
        return []
    derivable = {"attention_mask", "position_ids"}
    return [s for s in specs if s.name not in given and (s.name in derivable or "past" in s.name.lower())]


def _derived_inputs(specs: list[InputSpec], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ids = inputs.get("input_ids")
    derived = {}
    for spec in specs:
        if spec.name == "attention_mask":
            derived[spec.name] = np.ones(ids.shape, spec.dtype)
        elif spec.name == "position_ids":
            derived[spec.name] = np.broadcast_to(np.arange(ids.shape[-1], dtype=spec.dtype), ids.shape).copy()
        else:  # an empty cache: [samples, heads, 0, head_dim]
            dims = [d if isinstance(d, int) and d > 0 else 0 for d in spec.shape[1:]]
            derived[spec.name] = np.zeros((len(ids), *dims), spec.dtype)
    return derived


def _check_against_specs(arrays: dict[str, np.ndarray], specs: list[InputSpec], path: Path) -> None:
    """Names, ranks, fixed dims and dtypes of ``arrays`` (empty ones will do) against the model inputs."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in arrays]
    extra = [n for n in arrays if n not in names]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"no array for model input(s) {quoted_list(missing)}")
        if extra:
            problems.append(f"array(s) {quoted_list(extra)} match no model input")
        raise OptcError(
            f"{path}: {'; '.join(problems)}",
            hint=f"model inputs: {quoted_list(names)} (plus optional '{LABELS_KEY}')",
        )
    for spec in specs:
        _conform(arrays[spec.name], spec, f"{path}: array {spec.name!r}", 0)


def _conform(array: np.ndarray, spec: InputSpec, where: str, first_row: int) -> np.ndarray:
    """``array`` (rows ``first_row``... of the stored one) checked against ``spec`` and cast to its dtype."""
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
    bad = first_non_finite(array)
    if bad is not None:
        kind, index = bad
        index = (index[0] + first_row, *index[1:])
        raise OptcError(
            f"{where} holds {kind} at index {list(index)}; inputs must be finite",
            hint="clean the data: one non-finite value corrupts calibration ranges and every metric",
        )
    return array.astype(spec.dtype, copy=False)


def _check_labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise OptcError(
            f"{path}: '{LABELS_KEY}' must be a 1-D array of integer class indices, got {labels.dtype} "
            f"with shape {list(labels.shape)}"
        )
    if labels.size and labels.min() < 0:
        raise OptcError(f"{path}: '{LABELS_KEY}' holds {int(labels.min())} at index {int(labels.argmin())}")
    return labels.astype(np.int64)


def parse_input_shapes(values: list[str]) -> dict[str, tuple[int, ...]]:
    """``["input_ids=1x128"]`` -> ``{"input_ids": (1, 128)}``."""
    shapes = {}
    for value in values:
        match = re.fullmatch(r"([^=]+)=(\d+(?:x\d+)*)", value.strip())
        if not match:
            raise OptcError(f"--input-shape {value!r}: expected NAME=DIMxDIM..., e.g. input_ids=1x128")
        dims = tuple(int(d) for d in match.group(2).split("x"))
        if 0 in dims:
            raise OptcError(f"--input-shape {value!r}: every dim must be at least 1")
        if int(np.prod(dims, dtype=np.float64)) > MAX_SYNTHETIC_ELEMENTS:
            raise OptcError(f"--input-shape {value!r}: more than {MAX_SYNTHETIC_ELEMENTS:,} elements per sample")
        shapes[match.group(1)] = dims
    return shapes


def synthetic_dataset(
    model: onnx.ModelProto,
    specs: list[InputSpec],
    seed: int,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    samples: int = SYNTHETIC_SAMPLES,
) -> Dataset:
    """Seeded random inputs: floats ~ N(0, 1), token ids within the embedding table padded to random lengths where
    the model takes a mask (ones, zero over the padding), scalars 1.

    Symbolic dims take their size from ``input_shapes`` (one input's shape binds the dim's name for every input
    using it), else a default (``symbolic_sizes``), recorded in ``Dataset.assumed`` so the caller can say so.
    """
    input_shapes = input_shapes or {}
    unknown = [n for n in input_shapes if n not in {s.name for s in specs}]
    if unknown:
        raise OptcError(f"--input-shape names {', '.join(map(repr, unknown))}, which the model has no input for")
    sizes, assumed = symbolic_sizes(specs, input_shapes)
    rng = np.random.default_rng(seed)
    vocab = _lookup_table_sizes(model)
    # A model with a fixed batch dim, or a scalar input, cannot take stacked samples: then every sample is a whole
    # feed.
    per_sample = any(not s.batch_is_symbolic for s in specs)
    inputs = {}
    for spec in specs:
        sample_shape = _sample_shape(spec, input_shapes.get(spec.name), sizes)
        shape = (samples, *sample_shape)
        if per_sample and spec.shape:
            batch = input_shapes[spec.name][0] if spec.name in input_shapes else spec.shape[0]
            shape = (samples, batch if isinstance(batch, int) and batch > 0 else 1, *sample_shape)
        inputs[spec.name] = _synthetic_values(spec, shape, rng, vocab)
    _pad_like_a_batch(inputs, specs, rng)
    return Dataset(inputs=inputs, labels=None, source="synthetic", per_sample=per_sample, assumed=assumed)


def _synthetic_values(spec: InputSpec, shape: tuple[int, ...], rng, vocab: dict[str, int]) -> np.ndarray:
    name = spec.name.lower()
    if not spec.shape:  # a scalar setting (a sample rate, a threshold): 1 is valid more often than noise
        return np.ones(shape, dtype=spec.dtype)
    if spec.dtype.kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if spec.dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if "mask" in name:
        return np.ones(shape, dtype=spec.dtype)
    if "type" in name and "token" in name:
        return np.zeros(shape, dtype=spec.dtype)
    if "position" in name:  # position ids count along the last axis
        return np.broadcast_to(np.arange(shape[-1], dtype=spec.dtype), shape).copy()
    return rng.integers(0, vocab.get(spec.name, SYNTHETIC_INT_HIGH), shape).astype(spec.dtype)


def _pad_like_a_batch(inputs: dict[str, np.ndarray], specs: list[InputSpec], rng) -> None:
    """Give token sequences a random length and pad the rest (id 0, mask 0), as a tokenizer pads a batch.

    Real encoder inputs are padded, and the hidden states at padded positions are part of the outputs: an all-ones
    mask never shows how quantization treats them (a sentence encoder's padded positions fell to cosine 0.33 while
    the synthetic probe said 0.99). Models with a cache are left alone: their mask spans the cache too.
    """
    if any("past" in s.name.lower() for s in specs):
        return
    masks = [s.name for s in specs if s.dtype.kind in "iu" and s.shape and "mask" in s.name.lower()]
    tokens = [
        s.name
        for s in specs
        if s.dtype.kind in "iu" and s.shape and s.name not in masks and "position" not in s.name.lower()
    ]
    shape = inputs[masks[0]].shape if masks else None
    if shape is None or shape[-1] < 2 or any(inputs[n].shape != shape for n in masks + tokens):
        return
    length = shape[-1]
    lengths = rng.integers(max(1, length // 4), length + 1, shape[:-1])
    padded = np.arange(length) >= lengths[..., None]
    for name in masks + tokens:
        inputs[name][padded] = 0


def symbolic_sizes(
    specs: list[InputSpec], input_shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, int], dict[str, int]]:
    """Sizes for the named symbolic dims of non-batch axes, and those of them that were assumed, not given.

    A dim named like a cache length (``past_sequence_length``) defaults to 0 — an empty cache, so the evaluation runs
    are prefills, which give logits at every position — and one named like a total (``total_sequence_length``) is
    kept consistent with it, as decoders with a KV cache require: total = past + sequence.
    """
    sizes: dict[str, int] = {}
    for spec in specs:
        given = input_shapes.get(spec.name)
        if given is not None and len(given) == len(spec.shape):
            for dim, value in zip(spec.shape, given, strict=True):
                if isinstance(dim, str):
                    sizes.setdefault(dim, value)
    names = {dim for spec in specs for dim in spec.shape[1:] if isinstance(dim, str)} - set(sizes)
    assumed = {
        name: 0 if "past" in name.lower() else DEFAULT_SYMBOLIC_DIM
        for name in sorted(names)
        if "total" not in name.lower()
    }
    totals = [name for name in names if "total" in name.lower()]
    for name in totals:
        parts = [v for k, v in {**sizes, **assumed}.items() if "past" in k.lower() or _is_sequence(k)]
        assumed[name] = sum(parts) if parts else DEFAULT_SYMBOLIC_DIM
    sizes.update(assumed)
    return sizes, assumed


IMAGE_CHANNELS = (1, 3)  # gray or colour, first (NCHW) or last (NHWC)


def open_image_sizes(specs: list[InputSpec], input_shapes: dict[str, tuple[int, ...]]) -> dict[str, list]:
    """The image batches (4-D float inputs with 1 or 3 channels first or last) whose height or width is open and not
    set by ``input_shapes`` (directly, or through a dim name another input's given shape binds), with those dims. A
    decoder's key/value cache is 4-D too, its length named like a past or a sequence: not an image."""
    bound, _ = symbolic_sizes([s for s in specs if s.name in input_shapes], input_shapes)
    found = {}
    for spec in specs:
        if len(spec.shape) != 4 or spec.dtype.kind != "f" or spec.name in input_shapes:
            continue
        for channels, spatial in ((1, (2, 3)), (3, (1, 2))):
            if spec.shape[channels] not in IMAGE_CHANNELS:
                continue
            dims = [spec.shape[a] for a in spatial if _guessed(spec.shape[a], bound)]
            if dims and not any(isinstance(d, str) and ("past" in d.lower() or _is_sequence(d)) for d in dims):
                found[spec.name] = dims
                break
    return found


def refuse_guessed_image_sizes(specs: list[InputSpec], input_shapes: dict[str, tuple[int, ...]]) -> None:
    """Before synthetic inputs are made: an image batch of open size is refused (``open_image_sizes``). Noise images
    of a size optc guessed stand in for none the model serves: PP-OCRv4's text recognizer passed dynamic int8's
    fidelity search on 32x32 noise (cosine 0.998, every line read as blank) and came out at 0.978 on real 48x320 text
    lines, with exit 0; its detector's maps of such noise were all near zero."""
    open_sizes = open_image_sizes(specs, input_shapes)
    if not open_sizes:
        return
    name, dims = next(iter(open_sizes.items()))
    shape = next(s.shape for s in specs if s.name == name)
    example = "x".join(str(d) if isinstance(d, int) and d > 0 else "N" for d in (1, *shape[1:]))
    raise OptcError(
        f"no data given, and input {name!r} {list(shape)} is an image batch whose size is open "
        f"({', '.join(map(str, dims))}): optc would run the models on noise images of a size it guessed, which says "
        "nothing about the images they serve",
        hint=f"give real inputs with --data, or their size with --input-shape {name}={example} (each N a size your "
        "application feeds)",
    )


def _guessed(dim, bound: dict[str, int]) -> bool:
    return not (isinstance(dim, int) and dim > 0) and dim not in bound


def _is_sequence(name: str) -> bool:
    lowered = name.lower()
    return "total" not in lowered and "past" not in lowered and ("seq" in lowered or "len" in lowered)


def _sample_shape(spec: InputSpec, given: tuple[int, ...] | None, sizes: dict[str, int]) -> tuple[int, ...]:
    """Shape of one sample along the batch axis (the first dim is the batch and is filled by stacking)."""
    if given is not None:
        if len(given) != len(spec.shape):
            raise OptcError(
                f"--input-shape {spec.name}: {len(given)} dims given, the model input has {len(spec.shape)} "
                f"(shape {list(spec.shape)})"
            )
        return given[1:]
    if not spec.shape:
        return ()
    dims = []
    for dim in spec.shape[1:]:
        if isinstance(dim, int) and dim > 0:
            dims.append(dim)
        else:
            dims.append(sizes.get(dim, DEFAULT_SYMBOLIC_DIM) if isinstance(dim, str) else DEFAULT_SYMBOLIC_DIM)
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
    path: Path, specs: list[InputSpec], batch_size: int, samples: int | None = None, role: str = "calibration data"
) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of at most ``batch_size`` samples read from an ``.npz`` file or a folder, without loading it whole.

    Memory stays at one batch however many samples the data holds. ``samples`` caps how many are read; a ``labels``
    array is ignored. Arrays with one more axis than the model input hold whole batches: each row is fed as-is.
    """
    remaining = samples
    for source, readers in data_sources(Path(path), role):
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
            batch = {s.name: _conform(readers[s.name].read(take), s, readers[s.name].where, start) for s in specs}
            yield {name: np.asarray(array[0]) for name, array in batch.items()} if per_sample else batch
            if remaining is not None:
                remaining -= take
