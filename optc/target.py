"""The machine a model is compressed for, and the features of the CPU optc runs on.

Int8 accuracy and speed on ONNX Runtime depend on the CPU's integer dot-product instructions: without VNNI, x86's
u8×s8 kernels add pairs of products in 16 bits (``vpmaddubsw``), which saturates for large weights and activations;
with AVX-512 VNNI or AVX-VNNI (``vpdpbusd``) they accumulate in 32 bits. Deploy pipelines compress on one machine
and serve on another, so the target is named by the user (``target:`` / ``--target``) and only defaults to the CPU
optc runs on. The features are read here, once, and nowhere else.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

Target = Literal["auto", "portable", "x86-avx2", "x86-avx512", "x86-vnni", "arm64", "cuda"]
TARGETS: tuple[str, ...] = get_args(Target)
TARGET_HELP = (
    "auto: the CPU optc runs on; x86-avx2, x86-avx512 (AVX-512 without VNNI), x86-vnni (AVX-512 VNNI, AVX-VNNI or "
    "AMX), arm64, cuda; portable: settings that are accurate on every CPU"
)
# The flags of /proc/cpuinfo that decide int8 kernels (x86 `flags`, arm64 `Features`).
RELEVANT_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


@dataclass(frozen=True)
class CpuFeatures:
    arch: str  # platform.machine(): x86_64, aarch64, ...
    model: str
    flags: frozenset[str]  # the RELEVANT_FLAGS this CPU has

    @property
    def isa(self) -> str:
        """The target this CPU is an instance of; ``portable`` for CPUs no named target describes."""
        if self.arch in ("x86_64", "AMD64", "amd64"):
            if self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
                return "x86-vnni"
            if "avx512f" in self.flags:
                return "x86-avx512"
            if "avx2" in self.flags:
                return "x86-avx2"
            return "portable"
        if self.arch in ("aarch64", "arm64"):
            return "arm64"
        return "portable"

    def describe(self) -> str:
        flags = ", ".join(sorted(self.flags)) or "none of " + "/".join(RELEVANT_FLAGS[:4])
        return f"{self.model} ({self.arch}; {flags})"


@functools.cache
def detect_cpu() -> CpuFeatures:
    """The running CPU's features, read from /proc/cpuinfo (Linux); elsewhere only the architecture is known."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(errors="replace") if cpuinfo.exists() else ""
    return parse_cpuinfo(text, platform.machine() or "unknown", platform.processor())


def parse_cpuinfo(text: str, arch: str, fallback_model: str = "") -> CpuFeatures:
    """Features from /proc/cpuinfo text: x86 lists them as ``flags``, arm64 as ``Features``."""
    model: str | None = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return CpuFeatures(arch=arch, model=model or fallback_model or arch, flags=frozenset(flags & set(RELEVANT_FLAGS)))


def resolve_target(requested: str, cpu: CpuFeatures) -> str:
    """``auto`` becomes the running CPU's target; every other name stands for itself."""
    return cpu.isa if requested == "auto" else requested


def target_mismatch(target: str, cpu: CpuFeatures, providers: list[str]) -> str | None:
    """Why figures measured here will not hold on ``target``; None when they do (or the target is no one CPU)."""
    if target == "cuda":
        if "cuda" not in providers:
            return "target cuda, but measured on the CPU provider only: latency and accuracy will differ on a GPU"
        return None
    if target == "portable" or target == cpu.isa:
        return None
    return f"measured on {cpu.isa} ({cpu.model}); target {target}: latency and accuracy will differ there"
