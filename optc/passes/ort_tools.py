"""Calling ONNX Runtime's Python tools (quantizers, pre-processing, transformer optimizer) from a pass.

They read and write model files and log advice through the root logger; these helpers keep both in line with the
rest of optc: files go to the pass's private work folder, large models with external data, and nothing is printed.
Some write scratch files into the working directory (symbolic shape inference leaves ``sym_shape_infer_temp.onnx``
and ``<uuid>.data`` there), so they run ``inside`` the work folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

from optc.modelio import needs_external_data, write_with_external_data


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Silence the root logger below ERROR while a tool runs; optc reports through its own channels."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run with ``folder`` as the working directory, so a tool's scratch files land there and are removed with it."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def in_scratch_folder() -> Iterator[None]:
    """Run inside a temporary folder that is removed afterwards: for tools that may drop files in the working
    directory (ONNX Runtime's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` and one ``<uuid>.data`` per
    weight there when it cannot infer every shape)."""
    with tempfile.TemporaryDirectory(prefix="optc-scratch-") as folder, inside(Path(folder)):
        yield


def save_for_tool(model: onnx.ModelProto, path: Path) -> bool:
    """Write ``model`` where a tool will read it; returns whether it went out with external data (> 2 GB)."""
    large = needs_external_data(model)
    if large:
        write_with_external_data(model, path, path.name + ".data")
    else:
        onnx.save_model(model, str(path))
    return large
