"""Conv weights stored in int8 for float compute (dynamic int8's treatment of convolutions)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.data import Dataset
from optc.errors import OptcError, PassError
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.quantize_stored_weights import int8_stored_weights, store_weights_int8
from optc.passes.registry import PassContext
from tests.conftest import GATES, make_model, recurrent_model

RNG = np.random.default_rng(0)


def conv_net(weight_readers: int = 1, shared_with_max: bool = False) -> onnx.ModelProto:
    """x → Conv(K) [→ Conv(K) …] → ConvTranspose(T); K spans channels of very different magnitudes, as BatchNorm
    folding leaves them. ``shared_with_max`` also reads K with a ReduceMax (an output)."""
    scales = np.geomspace(0.01, 3, 8).astype(np.float32).reshape(8, 1, 1, 1)
    kernel = (RNG.standard_normal((8, 8, 3, 3)) * scales).astype(np.float32)
    transposed = RNG.standard_normal((8, 4, 2, 2)).astype(np.float32) / 4
    nodes, source = [], "x"
    for index in range(weight_readers):
        nodes.append(helper.make_node("Conv", [source, "K"], [f"c{index}"], name=f"conv{index}", pads=[1, 1, 1, 1]))
        source = f"c{index}"
    nodes.append(helper.make_node("ConvTranspose", [source, "T"], ["y"], name="up", strides=[2, 2]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 12, 12])]
    if shared_with_max:
        nodes.append(helper.make_node("ReduceMax", ["K"], ["K_max"], name="kmax", keepdims=0))
        outputs.append(helper.make_tensor_value_info("K_max", TensorProto.FLOAT, []))
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 6, 6])],
        outputs,
        [numpy_helper.from_array(kernel, "K"), numpy_helper.from_array(transposed, "T")],
    )


def outputs(model: onnx.ModelProto, x: np.ndarray, optimized: Path | None = None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    if optimized is not None:  # below NCHWc's level, so the saved graph does not depend on the CPU
        options.optimized_model_filepath = str(optimized)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_conv_weights_become_int8_per_output_channel_and_outputs_stay_close(tmp_path: Path):
    model = conv_net(weight_readers=2)
    stored = store_weights_int8(model, {"conv0", "conv1", "up"})
    onnx.checker.check_model(stored, full_check=True)
    initializers = {t.name: numpy_helper.to_array(t) for t in stored.graph.initializer}
    assert "K" not in initializers and "T" not in initializers
    assert initializers["K_int8"].dtype == np.int8 and initializers["K_int8_scale"].shape == (8, 1, 1, 1)
    kernel = numpy_helper.to_array(model.graph.initializer[0])
    dequantized = initializers["K_int8"] * initializers["K_int8_scale"]
    # one scale per output channel: each channel, tiny or large, is within half a step of its own 127 levels
    channel_error = np.abs(dequantized - kernel).reshape(8, -1).max(axis=1)
    assert (channel_error <= np.abs(kernel).reshape(8, -1).max(axis=1) / 254 * 1.001).all()
    ops = [n.op_type for n in stored.graph.node]
    assert ops == ["Cast", "Mul", "Cast", "Mul", "Conv", "Conv", "ConvTranspose"]  # at the front; K once for both
    assert int8_stored_weights(stored) == 2
    assert stored.ByteSize() < model.ByteSize() * 0.5  # 1 byte per weight instead of 4, plus the scales and nodes
    x = RNG.standard_normal((2, 8, 6, 6)).astype(np.float32)
    [expected], [got] = outputs(model, x), outputs(stored, x)
    cosine = float(np.dot(expected.ravel(), got.ravel()) / np.linalg.norm(expected) / np.linalg.norm(got))
    assert cosine > 0.9999
    assert [n.op_type for n in model.graph.node][0] == "Conv"  # the input model is untouched


def test_onnx_runtime_folds_the_dequantization_when_it_loads_the_model(tmp_path: Path):
    """The design rests on this: the session runs a float Conv with a constant weight, not Cast and Mul on every run
    (as DequantizeLinear would be, which ONNX Runtime keeps for its QDQ fusions)."""
    stored = store_weights_int8(conv_net(), {"conv0", "up"})
    outputs(stored, RNG.standard_normal((1, 8, 6, 6)).astype(np.float32), tmp_path / "loaded.onnx")
    loaded = [n.op_type for n in onnx.load(str(tmp_path / "loaded.onnx")).graph.node]
    assert loaded == ["Conv", "ConvTranspose"]


def test_a_weight_something_else_reads_or_a_caller_can_override_stays_float():
    shared = store_weights_int8(conv_net(shared_with_max=True), {"conv0", "up"})
    names = {t.name for t in shared.graph.initializer}
    assert "K" in names and "K_int8" not in names and "T_int8" in names
    overridable = conv_net()
    overridable.graph.input.append(helper.make_tensor_value_info("T", TensorProto.FLOAT, [8, 4, 2, 2]))
    assert int8_stored_weights(store_weights_int8(overridable, {"conv0", "up"})) == 1


def context(tmp_path: Path) -> PassContext:
    return PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": RNG.standard_normal((8, 8, 6, 6)).astype(np.float32)}, labels=None, source="x"),
        target="x86-avx2",  # the same defaults on any CPU the suite runs on
    )


def test_dynamic_int8_stores_a_conv_networks_weights_in_int8(tmp_path: Path):
    """Corpus CNNs without a MatMul (text and face detectors, YOLOv8n) were refused; now they come out about 4x
    smaller at the same speed."""
    outcome = run_quantize(conv_net(), QuantizeConfig(type="quantize", mode="dynamic"), context(tmp_path))
    assert outcome.details["weights_stored_int8"] == 2 and outcome.details["ops_quantized"] == 2
    assert outcome.details["weights_int8_share"] == 1.0 and outcome.warnings == []


def test_weight_only_stores_conv_weights_in_8_bits(tmp_path: Path):
    """The int4 recipes refused Conv networks outright; their convolutions now get 8-bit weights."""
    outcome = run_quantize(conv_net(), QuantizeConfig(type="quantize", mode="weight_only"), context(tmp_path))
    assert outcome.details["weights_stored_int8"] == 2 and outcome.details["weights_quantized"] == 0
    assert [n.op_type for n in outcome.model.graph.node].count("Cast") == 2


@pytest.mark.parametrize(("mode", "candidates"), [("dynamic", "MatMul/Gather/LSTM/GRU/RNN"), ("weight_only", "MatMul")])
def test_with_conv_weights_float_a_conv_network_is_refused_with_the_way_out(tmp_path: Path, mode, candidates):
    config = QuantizeConfig(type="quantize", mode=mode, conv_weights="float")
    with pytest.raises(OptcError, match=f"no {candidates} node with constant weights") as info:
        run_quantize(conv_net(), config, context(tmp_path))
    assert "conv_weights: int8" in info.value.hint


def test_conv_weights_is_a_dynamic_setting():
    with pytest.raises(ValueError, match="conv_weights only applies to modes dynamic and weight_only"):
        QuantizeConfig(type="quantize", mode="static", conv_weights="float")


def test_weight_only_keeps_a_conv_in_float_where_8_bits_miss_the_target(tmp_path: Path):
    """A text recognizer's Conv lost its int8 storage's accuracy (cosine 0.9987 → 0.982): the search must be able
    to keep such a Conv in float, or int4-accurate fails its own target on a model it handled before. Here one
    weight of 1000 on an input channel the data never uses sets its output channel's scale, zeroing the rest."""
    spoiled = (RNG.standard_normal((4, 4, 3, 3)) / 4).astype(np.float32)
    spoiled[0, 3, 1, 1] = 1000.0
    benign = (RNG.standard_normal((4, 4, 3, 3)) / 4).astype(np.float32)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "S"], ["h"], name="spoiled", pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["h", "B"], ["y"], name="benign", pads=[1, 1, 1, 1]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [numpy_helper.from_array(spoiled, "S"), numpy_helper.from_array(benign, "B")],
    )
    x = RNG.standard_normal((16, 4, 6, 6)).astype(np.float32)
    x[:, 3] = 0  # the channel the outlier weight reads
    data = PassContext(
        label="passes[0] quantize (weight_only)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": x}, labels=None, source="x"),
        target="x86-avx2",
    )
    stored_anyway = run_quantize(model, QuantizeConfig(type="quantize", mode="weight_only"), data).model
    [expected], [damaged] = outputs(model, x), outputs(stored_anyway, x)
    assert np.dot(expected.ravel(), damaged.ravel()) / np.linalg.norm(expected) / np.linalg.norm(damaged) < 0.99
    config = QuantizeConfig(type="quantize", mode="weight_only", min_cosine=0.999)
    outcome = run_quantize(model, config, data)
    assert [row["node"] for row in outcome.details["stored_kept_in_float"]] == ["spoiled"]
    assert outcome.details["weights_stored_int8"] == 1 and outcome.details["eight_bit_layers"] == []
    [got] = outputs(outcome.model, x)
    assert np.dot(expected.ravel(), got.ravel()) / np.linalg.norm(expected) / np.linalg.norm(got) > 0.999

    alone = onnx.ModelProto()
    alone.CopyFrom(model)
    del alone.graph.node[1:]
    alone.graph.output[0].name = "h"
    with pytest.raises(PassError, match="all 1 Conv node"):  # not an unchanged model passed off as optimized
        run_quantize(alone, config, data)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_weights_get_one_scale_per_row_and_outputs_stay_close(cell):
    model = recurrent_model(cell)
    stored = store_weights_int8(model, {cell.lower()})
    onnx.checker.check_model(stored, full_check=True)
    initializers = {t.name: numpy_helper.to_array(t) for t in stored.graph.initializer}
    assert initializers["W_int8"].dtype == initializers["R_int8"].dtype == np.int8 and "B" in initializers
    assert initializers["W_int8_scale"].shape == initializers["R_int8_scale"].shape == (1, GATES[cell] * 32, 1)
    x = RNG.standard_normal((10, 4, 16)).astype(np.float32)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (model, stored)]
    np.testing.assert_allclose(run[1].run(None, {"x": x})[0], run[0].run(None, {"x": x})[0], atol=0.02)


def test_dynamic_int8_stores_gru_weights_in_int8(tmp_path: Path):
    """ONNX Runtime has no int8 GRU: the corpus's GRU encoders kept 89 % of their size under int8-dynamic."""
    x = {"x": RNG.standard_normal((10, 8, 16)).astype(np.float32)}
    context = PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs=x, labels=None, source="x"),
        target="x86-avx2",
    )
    outcome = run_quantize(recurrent_model("GRU"), QuantizeConfig(type="quantize", mode="dynamic"), context)
    assert outcome.details["weights_stored_int8"] == 2 and outcome.details["weights_int8_share"] > 0.9
