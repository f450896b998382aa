"""Model outputs as arrays, whatever ONNX Runtime returns for them.

Sequence and map outputs (a ZipMap classifier's list of {class: probability}) come back as Python lists and dicts.
Every place that compares outputs — pass verification, the fuse proof, fp16 checks, accuracy — sees them as arrays:
a sequence of maps becomes one row per element with the values in key order, a sequence of tensors is stacked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnxruntime as ort


def as_array(value: object) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict):
        return np.asarray([value[key] for key in sorted(value)])
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        rows = [as_array(item) for item in value]
        if rows and all(row.shape == rows[0].shape for row in rows):
            return np.stack(rows)
        return np.concatenate([row.reshape(-1) for row in rows]) if rows else np.zeros(0, np.float32)
    return np.asarray(value)


def run_as_arrays(
    session: ort.InferenceSession, names: list[str] | None, feed: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """``session.run`` with every output as an array (``names`` None: all outputs)."""
    inputs = {i.name: feed[i.name] for i in session.get_inputs()}
    return [as_array(value) for value in session.run(names, inputs)]


def cut_feeds(
    feeds: Iterable[dict[str, np.ndarray]], session: ort.InferenceSession, samples: int | None
) -> Iterator[dict[str, np.ndarray]]:
    """``feeds`` re-cut into runs of at most ``samples`` samples where the model's batch axis is symbolic (None:
    as given). Runs that expose every tensor of a graph as an output hold all of them at once — a ViT at batch 16
    holds gigabytes — and the number of samples per run is what bounds that."""
    symbolic = all(i.shape and not isinstance(i.shape[0], int) for i in session.get_inputs())
    for feed in feeds:
        sizes = {len(v) if np.ndim(v) else 0 for v in feed.values()}
        if samples is None or not symbolic or len(sizes) != 1 or sizes == {0}:
            yield feed
            continue
        size = sizes.pop()
        for start in range(0, size, samples):
            yield {name: value[start : start + samples] for name, value in feed.items()}
