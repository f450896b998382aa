"""Where the figures were measured: versions, CPU, providers, and the GPU when CUDA is usable."""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess

import numpy
import onnx
import onnxruntime
from pydantic import BaseModel

import optc
from optc.target import detect_cpu

CUDNN_LIBRARIES = ("libcudnn.so.9", "libcudnn.so.8", "libcudnn.so")
NVIDIA_SMI_TIMEOUT_S = 10


class GpuInfo(BaseModel):
    """What CUDA figures ran on. Each field is None when it could not be found out (never a guess)."""

    name: str | None = None
    driver: str | None = None
    cuda_version: str | None = None  # the CUDA version this onnxruntime build targets
    cudnn_version: str | None = None  # the cuDNN library that loads in this process


class Environment(BaseModel):
    optc: str
    onnx: str
    onnxruntime: str
    numpy: str
    python: str
    platform: str
    cpu: str
    cpu_isa: str | None = None  # the target this CPU is an instance of (optc.target), e.g. x86-avx2
    cpu_features: list[str] = []  # the int8-relevant instruction set flags it has
    cpu_count: int
    providers_available: list[str]
    gpu: GpuInfo | None = None  # present only when this onnxruntime build has the CUDA provider


def current_environment() -> Environment:
    providers = list(onnxruntime.get_available_providers())
    cpu = detect_cpu()
    return Environment(
        optc=optc.__version__,
        onnx=onnx.__version__,
        onnxruntime=onnxruntime.__version__,
        numpy=numpy.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=cpu.model,
        cpu_isa=cpu.isa,
        cpu_features=sorted(cpu.flags),
        cpu_count=os.cpu_count() or 1,
        providers_available=providers,
        gpu=gpu_info() if "CUDAExecutionProvider" in providers else None,
    )


def gpu_info() -> GpuInfo:
    """Every probe fails soft: a missing tool or library leaves its field empty rather than stopping the run."""
    name, driver = _nvidia_smi()
    return GpuInfo(name=name, driver=driver, cuda_version=_ort_cuda_version(), cudnn_version=_cudnn_version())


def _nvidia_smi() -> tuple[str | None, str | None]:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None, None
    try:
        done = subprocess.run(
            [tool, "--query-gpu=name,driver_version", "--format=csv,noheader", "--id=0"],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    fields = [f.strip() for f in done.stdout.strip().split(",")]
    return (fields[0] or None, fields[1] or None) if len(fields) == 2 else (None, None)


def _ort_cuda_version() -> str | None:
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    return getattr(build_and_package_info, "cuda_version", None) or None


def _cudnn_version() -> str | None:
    for library in CUDNN_LIBRARIES:
        try:
            version = int(ctypes.CDLL(library).cudnnGetVersion())
        except (OSError, AttributeError):
            continue
        # cuDNN 9 encodes major*10000 + minor*100 + patch; cuDNN 8 and older major*1000 + minor*100 + patch.
        major, rest = divmod(version, 10000 if version >= 90000 else 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    return None
