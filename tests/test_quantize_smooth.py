"""SmoothQuant in dynamic int8: activation outlier channels moved into the weights before quantizing."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from optc.data import Dataset
from optc.passes import quantize_smooth
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


def dominant_channel_model() -> onnx.ModelProto:
    """x → MatMul(W) → y where one input channel dwarfs the others and its weight row is as large as theirs (a
    GELU output feeding BERT's FFN output projection): smoothing cannot balance it without ruining that row."""
    weight = np.random.default_rng(3).standard_normal((CHANNELS, 32)).astype(np.float32)
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="project")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CHANNELS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(weight, "W")],
    )


def dominant_channel_inputs(rows: int, seed: int) -> np.ndarray:
    x = np.abs(np.random.default_rng(seed).standard_normal((rows, CHANNELS))).astype(np.float32)
    x[:, 7] *= 40
    return x


def dominant_channel_outcome(tmp_path: Path, model: onnx.ModelProto | None = None, **fields):
    context = PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": dominant_channel_inputs(64, seed=1)}, labels=None, source="evaluation.npz"),
        target="x86-avx2",  # 7-bit weights, integer-exact kernels: the cosines below hold on any x86 CPU
    )
    config = QuantizeConfig(type="quantize", mode="dynamic", **fields)
    return run_quantize(model or dominant_channel_model(), config, context)


def test_a_dominant_channel_is_multiplied_in_float_where_smoothing_misses_the_target(tmp_path: Path):
    # Smoothed only, this model's output cosine is 0.99993; with the dominant channel in float, 0.99998.
    split = dominant_channel_outcome(tmp_path, min_cosine=0.99996)
    plain = dominant_channel_outcome(tmp_path, smooth=False)
    graph = split.model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    gather = next(n for n in graph.node if n.op_type == "Gather")
    assert gather.input[0] == "x" and helper.get_attribute_value(gather.attribute[0]) == -1
    assert initializers[gather.input[1]].tolist() == [7]
    weight = numpy_helper.to_array(dominant_channel_model().graph.initializer[0])
    np.testing.assert_array_equal(initializers["W_float_rows"], weight[[7]])
    assert not initializers["W_quantized"][7].any()  # the channel's row left the int8 weight
    (zeroing,) = [n for n in graph.node if n.output[0] == "x_smoothed"]
    assert initializers[zeroing.input[1]][7] == 0
    assert split.details["channels_in_float"] == 1 and plain.details["channels_in_float"] == 0
    assert split.details["kept_in_float"] == []
    conversions = [(row["conversion"], row["ok"]) for row in split.details["fidelity_search"]]
    assert conversions == [("smoothed", False), ("channels in float", True)]  # smoothing alone was tried first

    x = dominant_channel_inputs(8, seed=2)
    expected = x @ weight

    def error(model: onnx.ModelProto) -> float:
        got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))

    assert error(split.model) < error(plain.model) / 4


def test_no_channel_goes_to_float_where_smoothing_meets_the_target(tmp_path: Path):
    outcome = dominant_channel_outcome(tmp_path, min_cosine=0.999)
    assert outcome.details["channels_in_float"] == 0 and outcome.details["smoothed_inputs"] == 1
    assert not any(n.op_type == "Gather" for n in outcome.model.graph.node)


def test_the_search_stays_smoothed_where_float_channels_would_gain_too_little(tmp_path: Path, monkeypatch):
    """x (one dominant channel) → MatMul → MatMul: smoothed, the pair misses cosine 0.9999 (0.99982). Where no input
    gains enough from channels in float, the search keeps nodes in float from the smoothed conversion, and its
    report rows name no second conversion."""
    monkeypatch.setattr(quantize_smooth, "FLOAT_CHANNELS_PENALTY", 1e9)
    rng = np.random.default_rng(3)
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="project"),
            helper.make_node("MatMul", ["h", "W2"], ["y"], name="mix"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CHANNELS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [
            numpy_helper.from_array(rng.standard_normal((CHANNELS, 32)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "W2"),
        ],
    )
    outcome = dominant_channel_outcome(tmp_path, model, min_cosine=0.9999)
    assert outcome.details["channels_in_float"] == 0
    assert [row["node"] for row in outcome.details["kept_in_float"]]
    assert all("conversion" not in row for row in outcome.details["fidelity_search"])
