"""``make bench``: run every bench section and write bench/RESULTS.md.

Each ``bench/bench_*.py`` module exposes ``TITLE`` and ``run() -> str`` (a Markdown section). Run one section with
``python bench/run.py quantize`` (the part of the file name after ``bench_``); RESULTS.md is then rewritten with
that section replaced and the others kept.

Sections are kept per ISA level (optc.target): int8 speed and accuracy differ between AVX2-only and AVX-512 VNNI
CPUs, so a run on one kind replaces only that kind's figures and the other kind's stay, labelled, beside them.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import onnxruntime  # noqa: E402

import optc  # noqa: E402
from optc.target import detect_cpu  # noqa: E402

from harness import THREADS  # noqa: E402

RESULTS = HERE / "RESULTS.md"
MARK = "<!-- section: {} -->"
# Sections written before they carried an ISA label were all measured on an AMD EPYC with AVX-512 VNNI.
UNLABELLED_ISA = "x86-vnni"


def sections() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def default_sections() -> list[str]:
    """Sections a plain `make bench` runs; heavy ones set IN_DEFAULT_RUN = False and have their own target."""
    return [s for s in sections() if getattr(importlib.import_module(f"bench_{s}"), "IN_DEFAULT_RUN", True)]


def previous_sections() -> dict[str, str]:
    """Section bodies by key ``name @ isa``."""
    if not RESULTS.exists():
        return {}
    found = {}
    parts = re.split(r"(<!-- section: [\w@ .-]+ -->)", RESULTS.read_text())
    for marker, body in zip(parts[1::2], parts[2::2], strict=True):
        key = marker.removeprefix("<!-- section: ").removesuffix(" -->")
        found[key if "@" in key else f"{key} @ {UNLABELLED_ISA}"] = body.strip()
    return found


def main(selected: list[str]) -> None:
    chosen = selected or default_sections()
    unknown = [s for s in chosen if s not in sections()]
    if unknown:
        raise SystemExit(f"unknown bench section(s) {unknown}; known: {sections()}")
    cpu = detect_cpu()
    bodies = previous_sections()
    for name in chosen:
        module = importlib.import_module(f"bench_{name}")
        print(f"== {name}: {module.TITLE} (on {cpu.isa})", flush=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        where = (
            f"_Measured {stamp} on **{cpu.isa}** ({cpu.describe()}), {THREADS} intra-op thread unless a row says "
            f"otherwise; {platform.platform()}, Python {platform.python_version()}, onnxruntime "
            f"{onnxruntime.__version__}, optc {optc.__version__}._"
        )
        if emulated := os.environ.get("OPTC_BENCH_AVX2_ONLY"):
            where += f" _{emulated}: AVX2 kernels and numerics, speed ratios of this core running them._"
        bodies[f"{name} @ {cpu.isa}"] = f"## {module.TITLE} — {cpu.isa}\n\n{where}\n\n{module.run().strip()}"
    header = (
        "# optc benchmark results\n\n"
        "Written by `make bench` (`python bench/run.py [SECTION...]`). Every comparison inside a section is measured "
        "in one run: variants are timed interleaved after warm-up, figures are medians (p50) with p90 and the "
        "number of runs. Latency uses ONNX Runtime's CPU provider with "
        f"**{THREADS} intra-op thread** unless a row says otherwise.\n\n"
        "Each section names the ISA level of the CPU it ran on (`x86-avx2`: AVX2 without AVX-512 or VNNI; "
        "`x86-vnni`: AVX-512 VNNI): int8 speed and accuracy differ between them, so each kind keeps its own "
        "figures.\n"
    )
    keys = sorted(bodies, key=lambda k: (k.split(" @ ")[0], k))
    text = header + "".join(f"\n{MARK.format(k)}\n{bodies[k]}\n" for k in keys)
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main(sys.argv[1:])
