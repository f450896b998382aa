"""Shared fixtures: tiny graphs built with onnx.helper, the committed sample models, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
CNN = SAMPLES / "digits_cnn.onnx"
CNN_TEST = SAMPLES / "digits_test.npz"


def report_of(model_out: Path, suffix: str = ".json") -> Path:
    """Where compress writes the report of ``model_out`` by default: ``m.onnx`` → ``m.report.json``."""
    return model_out.with_name(model_out.name.removesuffix(".onnx") + ".report" + suffix)


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mlp_model(seed: int = 0, hidden: int = 64) -> onnx.ModelProto:
    """x[batch,16] -> MatMul+Add -> Relu -> Gemm(transB) -> y[batch,10]."""
    rng = np.random.default_rng(seed)
    weights = {
        "W1": rng.standard_normal((16, hidden)).astype(np.float32),
        "b1": rng.standard_normal(hidden).astype(np.float32),
        "W2": rng.standard_normal((10, hidden)).astype(np.float32),
        "b2": rng.standard_normal(10).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["h2"], name="add1"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("Gemm", ["h3", "W2", "b2"], ["y"], name="fc", transB=1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )


def wide_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[batch,64] -> MatMul W1[64,256] + b1 -> Relu -> MatMul W2[256,64] -> y: weights of 64 kB, which stay on disk
    when the model keeps them in external data (optc.tensors), and a 1 kB bias, which does not."""
    rng = np.random.default_rng(seed)
    weights = {
        "W1": (rng.standard_normal((64, 256)) / 8).astype(np.float32),
        "b1": rng.standard_normal(256).astype(np.float32),
        "W2": (rng.standard_normal((256, 64)) / 16).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["h2"], name="add1"),
        helper.make_node("Relu", ["h2"], ["h3"], name="relu"),
        helper.make_node("MatMul", ["h3", "W2"], ["y"], name="mm2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )


def read_again_in_an_if_branch(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """``model`` plus an If whose branches read ``tensor`` from the outer graph (its max, as output ``<tensor>_max``):
    a real export (a wake-word verifier) reads a MatMul's weight again this way."""
    branch = helper.make_graph(
        [helper.make_node("ReduceMax", [tensor], ["branch_out"], keepdims=0)],
        f"reads_{tensor}",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [])],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "condition"))
    model.graph.node.append(
        helper.make_node("If", ["condition"], [f"{tensor}_max"], then_branch=branch, else_branch=branch, name="reads")
    )
    model.graph.output.append(helper.make_tensor_value_info(f"{tensor}_max", TensorProto.FLOAT, []))
    return model


def relu_model() -> onnx.ModelProto:
    """A model with nothing to quantize."""
    return make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save_model(mlp_model(), str(path))
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_fast_recipe(folder: Path, passes_yaml: str, extra: str = "", name: str = "recipe.yaml") -> Path:
    """A recipe with short latency settings (tests check behaviour, not speed)."""
    path = folder / name
    path.write_text(
        f"version: 1\npasses:\n{passes_yaml}evaluate:\n  latency: {{warmup: 1, runs: 3, min_time_s: 0}}\n{extra}"
    )
    return path


@pytest.fixture
def fast_recipe(tmp_path: Path):
    return lambda passes_yaml, extra="", name="recipe.yaml": write_fast_recipe(tmp_path, passes_yaml, extra, name)


DYNAMIC_PASS = "  - type: quantize\n    mode: dynamic\n"


GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(cell: str = "LSTM", hidden: int = 32, features: int = 16) -> onnx.ModelProto:
    """x[time, batch, features] → LSTM/GRU/RNN → Y_h[1, batch, hidden]: its weights are most of the model."""
    rng = np.random.default_rng(0)
    gates = GATES[cell]
    weights = {
        "W": rng.standard_normal((1, gates * hidden, features)) * 0.3,
        "R": rng.standard_normal((1, gates * hidden, hidden)) * 0.3,
        "B": rng.standard_normal((1, 2 * gates * hidden)) * 0.1,
    }
    return make_model(
        [helper.make_node(cell, ["x", "W", "R", "B"], ["", "y"], name=cell.lower(), hidden_size=hidden)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10, "n", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", hidden])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
