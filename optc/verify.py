"""The check every pass's output goes through: the ONNX checker, an ONNX Runtime session, and finite outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from optc.errors import OptcError, PassError
from optc.isolation import RISKY_OP_TYPES, run_isolated
from optc.measure.providers import check_options
from optc.measure.values import run_as_arrays
from optc.messages import exception_reason
from optc.model_facts import all_nodes
from optc.modelio import needs_external_data, tensor_bytes, write_with_external_data

# Models with more weights than this reach ONNX Runtime as files: bytes would be a second and third copy in memory.
SESSION_FILE_BYTES = 256 * 2**20


def session_source(model: onnx.ModelProto, workdir: Path, name: str) -> bytes | str:
    """What ``InferenceSession`` takes: bytes for a small model; for one whose weights are on disk or large, a file
    in ``workdir`` with its weights beside it, which ONNX Runtime reads without a serialized copy in memory."""
    if not needs_external_data(model) and tensor_bytes(model) < SESSION_FILE_BYTES:
        return model.SerializeToString()
    path = workdir / f"{name}.onnx"
    write_with_external_data(model, path, f"{name}.onnx.data")
    return str(path)


def verify_model(
    model: onnx.ModelProto,
    label: str,
    workdir: Path,
    feed: dict[str, np.ndarray] | None,
    finite_outputs: set[str],
) -> None:
    """Raise ``PassError`` naming ``label`` unless the model is valid, loads, and keeps finite outputs finite.

    ``finite_outputs`` names the outputs that were all finite before the pass: NaN/Inf appearing there is a defect
    of the pass, never of the input.
    """
    source = session_source(model, workdir, "verify")
    try:
        onnx.checker.check_model(source if isinstance(source, str) else model)
    except onnx.checker.ValidationError as exc:
        raise PassError(label, f"the result is not a valid ONNX model: {exception_reason(exc)}") from exc
    if any(node.op_type in RISKY_OP_TYPES for node in all_nodes(model.graph)):
        outputs = run_isolated(label, _load_and_run, source, label, feed)
    else:
        outputs = _load_and_run(source, label, feed)
    broken = [name for name, value in outputs.items() if name in finite_outputs and not _finite(value)]
    if broken:
        raise PassError(label, f"the result produces NaN/Inf in output(s) {', '.join(broken)}, the original did not")


def _load_and_run(source: bytes | str, label: str, feed: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Open a session on ``source`` and run ``feed`` through it; outputs by name (none without a feed)."""
    try:
        session = ort.InferenceSession(source, sess_options=check_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime refuses, the pass produced it
        raise PassError(label, f"ONNX Runtime cannot load the result: {exception_reason(exc)}") from exc
    if feed is None:
        return {}
    try:
        outputs = run_as_arrays(session, None, feed)
    except Exception as exc:  # noqa: BLE001
        raise PassError(label, f"the result fails to run in ONNX Runtime: {exception_reason(exc)}") from exc
    return {o.name: value for o, value in zip(session.get_outputs(), outputs, strict=True)}


def _finite(value: np.ndarray) -> bool:
    return value.dtype.kind != "f" or bool(np.all(np.isfinite(value)))


def run_reference(model_path: Path, feed: dict[str, np.ndarray], feed_source: str) -> dict[str, np.ndarray]:
    """The input model's outputs on ``feed`` (from ``feed_source``), by name; refuses a model ONNX Runtime cannot
    run on it."""
    try:
        session = ort.InferenceSession(
            str(model_path), sess_options=check_options(), providers=["CPUExecutionProvider"]
        )
        outputs = run_as_arrays(session, None, feed)
    except Exception as exc:  # noqa: BLE001 - whatever ONNX Runtime refuses, the input is at fault
        raise OptcError(
            f"{model_path}: ONNX Runtime cannot run this model on {feed_source}: {exception_reason(exc)}"
        ) from exc
    return {o.name: value for o, value in zip(session.get_outputs(), outputs, strict=True)}


def finite_outputs(outputs: dict[str, np.ndarray]) -> set[str]:
    """Names of the outputs that hold only finite values (non-float ones always do)."""
    return {name for name, value in outputs.items() if _finite(value)}
