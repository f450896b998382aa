"""Execution providers by their short names, and sessions that are honest about where they run.

ONNX Runtime silently falls back to the CPU when a provider cannot be used; a session counts as running on the
provider we asked for only if that provider comes first in ``session.get_providers()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

from optc.messages import exception_reason

ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
INSTALL_HINT = {"cuda": "install onnxruntime-gpu instead of onnxruntime, on a machine with an NVIDIA GPU"}


@dataclass(frozen=True)
class Unavailable:
    provider: str
    reason: str


def session_options(threads: int, profile_prefix: str | None = None) -> ort.SessionOptions:
    """Options for a measured session; ``profile_prefix`` turns on ONNX Runtime's per-node profiler."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 4  # fatal only: optc reports failures itself, in its own words
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def check_options() -> ort.SessionOptions:
    """Options for sessions that check a model's outputs rather than time it (pass verification, proofs,
    calibration, fidelity searches): one thread, and no memory arena, which would keep the largest run's buffers
    (all of a graph's activations, when every tensor is an output) for the session's life. Weight prepacking stays
    on: some kernels compute differently without it (MatMulNBits at accuracy_level 4 falls back to float compute),
    and a check must see the numbers the deployed model will produce."""
    options = session_options(1)
    options.enable_cpu_mem_arena = False
    return options


def unavailable_reason(provider: str) -> str | None:
    """Why ``provider`` cannot be used at all in this onnxruntime build; None when it is built in."""
    ort_name = ORT_NAMES[provider]
    if ort_name in ort.get_available_providers():
        return None
    hint = INSTALL_HINT.get(provider, "")
    return f"{ort_name} is not available in this onnxruntime build" + (f" ({hint})" if hint else "")


def open_session(
    model: bytes | str, provider: str, threads: int = 1, profile_prefix: str | None = None
) -> ort.InferenceSession | Unavailable:
    """A session on ``provider`` ('cpu' or 'cuda'), or the reason it cannot be had."""
    ort_name = ORT_NAMES[provider]
    reason = unavailable_reason(provider)
    if reason is not None:
        return Unavailable(provider, reason)
    providers = [ort_name] if provider == "cpu" else [ort_name, ORT_NAMES["cpu"]]
    try:
        options = session_options(threads, profile_prefix)
        session = ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - any ORT failure to start a provider means "not measured"
        if provider == "cpu":
            raise
        return Unavailable(provider, f"{ort_name} failed to start: {exception_reason(exc)}")
    active = session.get_providers()
    if not active or active[0] != ort_name:
        return Unavailable(provider, f"ONNX Runtime fell back to {active[0] if active else 'nothing'} (no usable GPU?)")
    return session


def available_providers() -> list[str]:
    return list(ort.get_available_providers())
