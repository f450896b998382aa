"""A model over 2 GB (weights in external data) through inspect and every built-in recipe that applies to it.

Not part of the default `make bench` run (it writes several GB): `make big-model-check`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from harness import ROOT, run_measured

TITLE = "Big model (> 2 GB, external data)"
IN_DEFAULT_RUN = False
HIDDEN = 8192
LAYERS = 9  # 9 x 8192 x 8192 float32 = 2.42 GB of weights
RECIPES = ("fuse", "int8-dynamic", "int8", "fp16", "int4", "prune-magnitude-50")
PEAK_TARGET = 1.5  # × the model's size on disk
WEIGHT_ONLY_PEAK_TARGET = {"int4": 1.0}
WORK = Path(__file__).parent / ".cache" / "big"


def build(path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    x = "x"
    for i in range(LAYERS):
        weight = (rng.standard_normal((HIDDEN, HIDDEN), dtype=np.float32) / np.sqrt(HIDDEN)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(np.zeros(HIDDEN, np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"layer{i}/MatMul"),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"layer{i}/Add"),
        ]
        x = f"a{i}"
        if i < LAYERS - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"layer{i}/Relu"))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HIDDEN])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="big.onnx.data",
        size_threshold=1024,
    )


# The weight-only pass as `compress` runs it (weights left on disk, the pass with its own check, the write) without
# the measurement after it, whose fp32 session of the original sets the floor of every full run.
WEIGHT_ONLY_PASS = """
import sys
from pathlib import Path
import numpy as np
from optc.data import Dataset
from optc.modelio import load_model, write_model
from optc.passes.quantize import QuantizeConfig
from optc.passes.quantize_weights import run_weight_only
from optc.passes.registry import PassContext
from optc.target import detect_cpu
source, target, hidden = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
target.parent.mkdir(parents=True)
probe = np.random.default_rng(0).standard_normal((4, hidden), dtype=np.float32)
context = PassContext(label="int4", workdir=target.parent, seed=0, target=detect_cpu().isa,
                      dataset=Dataset(inputs={"x": probe}, labels=None, source="synthetic"))
config = QuantizeConfig(type="quantize", mode="weight_only")
write_model(run_weight_only(load_model(source).model, config, context).model, target)
"""


def size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def run() -> str:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    model = WORK / "big.onnx"
    build(model)
    size = size_on_disk(model)
    rows = [
        f"Input: {LAYERS} MatMul+Add layers of {HIDDEN}×{HIDDEN} float32, {size / 1e9:.2f} GB on disk "
        "(weights in `big.onnx.data`). Peak memory is the largest resident set of optc's whole process tree "
        "(sampled every 0.2 s, and never below the kernel's own high-water mark of the largest process), "
        "measurement included. Targets: peak ≤ 1.5× the model's size for every recipe, ≤ 1.0× for "
        "weight-only (`int4`). Recipes left out need what this model lacks: labelled or calibration data "
        "(`int8-accurate`, `int4-accurate`, `prune-auto`), an encoder (`bert-int8`) or Conv channels "
        "(`prune-channels-25`).",
        "",
        "| step | exit | wall time | peak memory | peak / model size | target | output size |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    optc = [sys.executable, "-m", "optc"]
    steps = [("inspect", [*optc, "inspect", str(model), "--json"], None, PEAK_TARGET)]
    for recipe in RECIPES:
        out = WORK / recipe / "big.onnx"
        args = [*optc, "compress", str(model), "-r", recipe, "-o", str(out), "--quiet"]
        steps.append((f"compress --recipe {recipe}", args, out, WEIGHT_ONLY_PEAK_TARGET.get(recipe, PEAK_TARGET)))
    out = WORK / "int4-pass" / "big.onnx"
    args = [sys.executable, "-c", WEIGHT_ONLY_PASS, str(model), str(out), str(HIDDEN)]
    steps.append(("int4 pass alone (no measurement)", args, out, WEIGHT_ONLY_PEAK_TARGET["int4"]))
    for label, args, out, target in steps:
        result = run_measured(args, cwd=ROOT)
        written = "—"
        if out is not None:
            kept = out if out.exists() else out.with_suffix(".rejected.onnx")
            written = f"{size_on_disk(kept) / 1e9:.2f} GB" if kept.exists() else "—"
        peak = result.peak_rss_mb * 2**20  # bytes
        mark = "✓" if peak <= target * size else "✗"
        rows.append(
            f"| `optc {label}` | {result.returncode} | {result.wall_s:.0f} s | {peak / 1e9:.2f} GB | "
            f"{peak / size:.2f}× | ≤ {target:.1f}× {mark} | {written} |"
        )
        if result.returncode not in (0, 1):
            rows.append(f"| | error: {' '.join(result.stderr.split())[:300]} | | | | | |")
        if out is not None:
            shutil.rmtree(out.parent, ignore_errors=True)
    shutil.rmtree(WORK, ignore_errors=True)
    return "\n".join(rows)
