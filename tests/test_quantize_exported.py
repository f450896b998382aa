"""Exported-model shapes that trip ONNX Runtime's quantizer: each ends quantized and verified, or refused plainly."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.errors import PassError
from optc.model_facts import op_histogram
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.quantize_prepare import constants_to_initializers, unprefixed_initializer_names
from optc.passes.quantize_stored_weights import int8_stored_weights
from optc.verify import verify_model
from tests.conftest import make_model
from tests.test_quantize_static import calib_file, context, static

RNG = np.random.default_rng(3)
W = RNG.standard_normal((16, 32)).astype(np.float32)
X_INFO = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])


def int8_weight_elements(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.INT8 and t.dims)


def quantize_and_verify(model: onnx.ModelProto, tmp_path: Path):
    ctx = context(tmp_path, calib_file(tmp_path))
    outcome = run_quantize(model, static(), ctx)
    verify_model(outcome.model, ctx.label, tmp_path, ctx.sample_inputs[0], {o.name for o in model.graph.output})
    return outcome


def test_constant_node_weights_are_quantized_as_weights(tmp_path: Path):
    model = make_model(
        [
            helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(W), name="const_w"),
            helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        ],
        [X_INFO],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
    )
    assert constants_to_initializers(model)[1] == 1
    outcome = quantize_and_verify(model, tmp_path)
    assert int8_weight_elements(outcome.model) >= W.size
    assert not [t for t in outcome.model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2]
    assert "1 Constant node(s) turned into initializers" in outcome.details["rewrites"]


def test_opset_11_is_upgraded_for_per_channel_weights(tmp_path: Path):
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [X_INFO],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(W, "W")],
        opset=11,
    )
    outcome = quantize_and_verify(model, tmp_path)
    assert any("opset upgraded from 11 to 13" in note for note in outcome.details["rewrites"])
    assert outcome.details["per_channel"] is True


def test_initializers_listed_as_inputs_are_still_weights(tmp_path: Path):
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [X_INFO, helper.make_tensor_value_info("W", TensorProto.FLOAT, [16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(W, "W")],
    )
    model.ir_version = 3
    outcome = quantize_and_verify(model, tmp_path)
    assert int8_weight_elements(outcome.model) >= W.size
    assert [i.name for i in outcome.model.graph.input] == ["x"]


def if_model() -> onnx.ModelProto:
    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", "W"], [f"{name}_y"], name=f"{name}_mm")],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", 32])],
        )

    return make_model(
        [
            helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True)), name="cond"),
            helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("then"), else_branch=branch("else")),
        ],
        [X_INFO],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(W, "W")],
    )


def test_a_weight_if_branches_read_from_outside_is_stored_in_int8_once(tmp_path: Path):
    """Both branches' MatMuls read the main graph's W: no QDQ reaches them, so W is stored in int8 where it lives."""
    outcome = run_quantize(if_model(), static(preprocess=False), context(tmp_path, calib_file(tmp_path)))
    assert int8_stored_weights(outcome.model) == 1
    assert int8_weight_elements(outcome.model) == W.size


def test_network_inside_an_if_subgraph_without_constant_weights_is_refused_plainly(tmp_path: Path):
    """Each branch multiplies x by its own transpose: nothing constant to store, and no QDQ reaches a body."""

    def branch(name: str) -> onnx.GraphProto:
        return helper.make_graph(
            [
                helper.make_node("Transpose", ["x"], [f"{name}_xt"], name=f"{name}_t"),
                helper.make_node("MatMul", ["x", f"{name}_xt"], [f"{name}_y"], name=f"{name}_mm"),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ["batch", "batch"])],
        )

    model = make_model(
        [
            helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True)), name="cond"),
            helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch("then"), else_branch=branch("else")),
        ],
        [X_INFO],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "batch"])],
    )
    # each branch: its Transpose and its MatMul
    with pytest.raises(PassError, match=r"quantized 0 ops.*4 candidate node\(s\) sit inside If/Loop/Scan subgraphs"):
        run_quantize(model, static(preprocess=False), context(tmp_path, calib_file(tmp_path)))


def test_if_with_a_constant_condition_is_folded_and_quantized(tmp_path: Path):
    outcome = quantize_and_verify(if_model(), tmp_path)  # pre-processing inlines the taken branch
    assert "If" not in op_histogram(outcome.model) and outcome.details["quantized_op_types"] == {"MatMul": 1}


def test_chain_feeding_log_stays_in_float(tmp_path: Path):
    """A power spectrum → log: the MatMul and Add before Log keep float, the first MatMul is quantized."""
    mel = np.abs(RNG.standard_normal((32, 8))).astype(np.float32) * 1e-3
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["spec"], name="dft"),
            helper.make_node("Mul", ["spec", "spec"], ["power"], name="square"),
            helper.make_node("MatMul", ["power", "mel"], ["melspec"], name="mel"),
            helper.make_node("Add", ["melspec", "eps"], ["shifted"], name="add_eps"),
            helper.make_node("Log", ["shifted"], ["y"], name="log"),
        ],
        [X_INFO],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [
            numpy_helper.from_array(W, "W"),
            numpy_helper.from_array(mel, "mel"),
            numpy_helper.from_array(np.array(1e-9, np.float32), "eps"),
        ],
    )
    outcome = quantize_and_verify(model, tmp_path)
    kept = {row["node"]: row for row in outcome.details["kept_in_float"]}
    assert {"add_eps", "mel"} <= set(kept) and "Log" in kept["mel"]["reason"]
    assert "dft" not in kept
    assert outcome.details["quantized_op_types"].get("MatMul") == 1


def test_lstm_and_its_state_readers_stay_in_float(tmp_path: Path):
    hidden = 8
    weights = {
        "Wx": RNG.standard_normal((1, 4 * hidden, 16)).astype(np.float32) * 0.1,
        "R": RNG.standard_normal((1, 4 * hidden, hidden)).astype(np.float32) * 0.1,
        "Wo": RNG.standard_normal((hidden, 4)).astype(np.float32),
        "Wp": RNG.standard_normal((16, 16)).astype(np.float32),
    }
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "Wp"], ["xp"], name="proj"),
            helper.make_node("Unsqueeze", ["xp", "axis0"], ["seq"], name="unsqueeze"),
            helper.make_node("LSTM", ["seq", "Wx", "R"], ["Y", "Y_h"], name="lstm", hidden_size=hidden),
            helper.make_node("Squeeze", ["Y_h", "axis0"], ["h"], name="squeeze"),
            helper.make_node("MatMul", ["h", "Wo"], ["y"], name="head"),
        ],
        [X_INFO],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()]
        + [numpy_helper.from_array(np.array([0], np.int64), "axis0")],
    )
    outcome = quantize_and_verify(model, tmp_path)
    kept = {row["node"]: row["reason"] for row in outcome.details["kept_in_float"]}
    assert "recurrent" in kept["lstm"] and "state output" in kept["squeeze"]
    assert op_histogram(outcome.model)["LSTM"] == 1
    assert outcome.details["quantized_op_types"].get("MatMul", 0) >= 1


def test_a_norms_square_keeps_nothing_in_float_but_a_reciprocal_root_does(tmp_path: Path):
    """openWakeWord's wake-word heads normalize each Gemm output with a decomposed LayerNorm (ReduceMean, Sub,
    Pow 2, ReduceMean, Add, Sqrt, Div): the rule that reads Pow as small-magnitude-sensitive kept both big Gemms float
    (model size 1.00 of fp32), where quantized the head scores cosine 0.9999 at 0.26 of the size. A square rounds a
    small base to a small value, and behind the mean of squares one rounded element averages away; a Pow by -0.5
    (a reciprocal square root) still blows a zero up, so the MatMul feeding it stays float."""
    rng = np.random.default_rng(4)
    width = 32
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"], name="dense"),
            helper.make_node("ReduceMean", ["h"], ["mean"], name="mean", axes=[1], keepdims=1),
            helper.make_node("Sub", ["h", "mean"], ["centered"], name="center"),
            helper.make_node("Pow", ["centered", "two"], ["square"], name="square"),
            helper.make_node("ReduceMean", ["square"], ["variance"], name="variance", axes=[1], keepdims=1),
            helper.make_node("Add", ["variance", "eps"], ["shifted"], name="add_eps"),
            helper.make_node("Sqrt", ["shifted"], ["std"], name="std"),
            helper.make_node("Div", ["centered", "std"], ["normed"], name="normalize"),
            helper.make_node("MatMul", ["x", "W2"], ["g"], name="gain"),
            helper.make_node("Abs", ["g"], ["magnitude"], name="magnitude"),
            helper.make_node("Pow", ["magnitude", "minus_half"], ["rsqrt"], name="rsqrt"),
            helper.make_node("Mul", ["normed", "rsqrt"], ["y"], name="scale"),
        ],
        [X_INFO],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [
            numpy_helper.from_array(rng.standard_normal((16, width)).astype(np.float32), "W1"),
            numpy_helper.from_array(rng.standard_normal((16, width)).astype(np.float32), "W2"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(-0.5, np.float32), "minus_half"),
            numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        ],
    )
    dynamic = QuantizeConfig(type="quantize", mode="dynamic")
    for config, ctx in ((dynamic, context(tmp_path)), (static(), context(tmp_path, calib_file(tmp_path)))):
        ctx.target = "x86-avx2"  # the same kernels on any x86 CPU
        kept = {row["node"]: row["reason"] for row in run_quantize(model, config, ctx).details["kept_in_float"]}
        assert "dense" not in kept and "Pow 'rsqrt'" in kept["gain"]


def test_initializers_whose_names_begin_other_names_are_renamed_before_static_int8(tmp_path: Path):
    """tf2onnx names a Conv's bias ``.../conv1d_25`` and its output ``.../conv1d_252``; ONNX Runtime's static
    quantizer, which derives names by appending to them, then fed basic-pitch's [36] bias to a 4-D Transpose."""
    bias = RNG.standard_normal(32).astype(np.float32)
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "m/dense_1"], ["m/dense_1_mm"], name="mm"),
            helper.make_node("Add", ["m/dense_1_mm", "m/dense_"], ["m/dense_12"], name="add"),
            helper.make_node("Neg", ["m/dense_12"], ["y"], name="neg"),
        ],
        [X_INFO],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(W, "m/dense_1"), numpy_helper.from_array(bias, "m/dense_")],
    )
    renamed, count = unprefixed_initializer_names(model)
    assert count == 2  # "m/dense_1" begins "m/dense_1_mm", "m/dense_" begins the others; outputs keep their names
    assert {t.name for t in renamed.graph.initializer} == {"m/dense_1__init0", "m/dense___init1"}
    assert [list(n.input) for n in renamed.graph.node][:2] == [
        ["x", "m/dense_1__init0"],
        ["m/dense_1_mm", "m/dense___init1"],
    ]
    outcome = quantize_and_verify(model, tmp_path)
    assert any("2 initializer(s) renamed" in note for note in outcome.details["rewrites"])
