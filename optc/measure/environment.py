"""Where the figures were measured: versions, CPU, providers."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy
import onnx
import onnxruntime
from pydantic import BaseModel

import optc


class Environment(BaseModel):
    optc: str
    onnx: str
    onnxruntime: str
    numpy: str
    python: str
    platform: str
    cpu: str
    cpu_count: int
    providers_available: list[str]


def current_environment() -> Environment:
    return Environment(
        optc=optc.__version__,
        onnx=onnx.__version__,
        onnxruntime=onnxruntime.__version__,
        numpy=numpy.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=_cpu_model(),
        cpu_count=os.cpu_count() or 1,
        providers_available=list(onnxruntime.get_available_providers()),
    )


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
