"""Model outputs as arrays, whatever ONNX Runtime returns for them.

Sequence and map outputs (a ZipMap classifier's list of {class: probability}) come back as Python lists and dicts.
Every place that compares outputs — pass verification, the fuse proof, fp16 checks, accuracy — sees them as arrays:
a sequence of maps becomes one row per element with the values in key order, a sequence of tensors is stacked.
"""

from __future__ import annotations

from collections.abc import Sequence

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
