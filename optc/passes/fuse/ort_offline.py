"""ONNX Runtime's own graph optimizations, applied once and saved (``ort_level``).

``basic`` does standard-op rewrites only (constant folding, redundant node removal, some fusions into standard
ops), so its output runs on every execution provider. ``extended`` adds fusions into ONNX Runtime contrib ops that
are implemented for the provider the optimization ran on (here the CPU), so its output is not portable: it needs
ONNX Runtime, and other providers may lack some of those ops.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from optc.modelio import adopt_model, needs_external_data
from optc.verify import session_source

LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def optimize_offline(model: onnx.ModelProto, level: str, workdir: Path) -> onnx.ModelProto:
    target = workdir / f"ort_{level}.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(target)
    if needs_external_data(model):
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", f"{target.name}.data"
        )
    ort.InferenceSession(session_source(model, workdir, "ort_input"), options, providers=["CPUExecutionProvider"])
    return adopt_model(target)
