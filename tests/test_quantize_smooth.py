"""SmoothQuant in dynamic int8: activation outlier channels moved into the weights before quantizing."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from optc.data import Dataset
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.registry import PassContext
from tests.conftest import make_model

CHANNELS = 64


def outlier_inputs(rows: int, seed: int) -> np.ndarray:
    """Activations like a trained transformer's: most channels near ±1, two channels two orders larger."""
    x = np.random.default_rng(seed).standard_normal((rows, CHANNELS)).astype(np.float32)
    x[:, [3, 40]] *= 100
    return x


def two_readers_model() -> onnx.ModelProto:
    """x → MatMul(Wq), MatMul(Wk) (one input, two weights: one smoothing scale for both) → Add → y. The outlier
    channels' weight rows are small, as LayerNorm outliers' are, so every channel matters to the output."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2, CHANNELS, 32)).astype(np.float32)
    values[:, [3, 40]] *= 0.01
    weights = [numpy_helper.from_array(w, name) for w, name in zip(values, "QK", strict=True)]
    return make_model(
        [
            helper.make_node("MatMul", ["x", "Q"], ["q"], name="query"),
            helper.make_node("MatMul", ["x", "K"], ["k"], name="key"),
            helper.make_node("Add", ["q", "k"], ["y"], name="sum"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CHANNELS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        weights,
    )


def quantized(tmp_path: Path, source: str = "evaluation.npz", **fields) -> onnx.ModelProto:
    context = PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": outlier_inputs(64, seed=1)}, labels=None, source=source),
    )
    config = QuantizeConfig(type="quantize", mode="dynamic", per_channel=True, reduce_range=True, **fields)
    outcome = run_quantize(two_readers_model(), config, context)
    outcome.model.graph.ClearField("value_info")
    return outcome


def relative_error(model: onnx.ModelProto) -> float:
    x = outlier_inputs(1, seed=2)  # one held-out row: one dynamic range per call, as at serving time
    expected = ort.InferenceSession(two_readers_model().SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def test_smoothing_divides_the_shared_input_once_and_lowers_the_int8_error(tmp_path: Path):
    smoothed = quantized(tmp_path / "smooth")
    plain = quantized(tmp_path / "plain", smooth=False)
    graph = smoothed.model.graph
    quantize_nodes = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    assert len(quantize_nodes) == 1 and quantize_nodes[0].input[0] == "x_smoothed"
    assert [n.input[0] for n in graph.node if n.op_type == "Mul" and n.output[0] == "x_smoothed"] == ["x"]
    assert smoothed.details["smoothed_inputs"] == 1 and plain.details["smoothed_inputs"] == 0
    inverse = numpy_helper.to_array(next(t for t in graph.initializer if t.name == "x_smooth_inverse"))
    assert inverse[[3, 40]].max() < np.delete(inverse, [3, 40]).min()  # the outlier channels are divided most
    assert relative_error(smoothed.model) < relative_error(plain.model) / 2


def test_no_smoothing_on_synthetic_inputs(tmp_path: Path):
    outcome = quantized(tmp_path, source="synthetic")
    assert outcome.details["smoothed_inputs"] == 0 and outcome.details["smoothed_on"] is None
    assert not any(n.op_type == "Mul" and n.output[0] == "x_smoothed" for n in outcome.model.graph.node)
    assert quantized(tmp_path / "data").details["smoothed_on"] == "evaluation.npz"


def test_smooth_is_refused_outside_dynamic_mode():
    with pytest.raises(ValidationError, match="smooth only applies to mode: dynamic"):
        QuantizeConfig(type="quantize", mode="static", smooth=False)
    with pytest.raises(ValidationError, match="smooth"):
        QuantizeConfig(type="quantize", mode="weight_only", smooth=True)
