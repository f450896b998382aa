from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from optc.data import Dataset
from optc.errors import OptcError, PassError
from optc.model_facts import op_histogram
from optc.passes.exclude import ExcludeSpec
from optc.passes.ort_tools import quiet_root_logger
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.quantize_keep_float import float_sensitive_nodes
from optc.passes.quantize_matmul_dynamic import quantize_matmuls
from optc.passes.quantize_prepare import gemm_to_matmul
from optc.passes.registry import PassContext
from tests.conftest import make_model, mlp_model, read_again_in_an_if_branch, recurrent_model, relu_model, wide_mlp


def context(tmp_path: Path) -> PassContext:
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    return PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": x}, labels=None, source="synthetic"),
    )


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def config(**fields) -> QuantizeConfig:
    return QuantizeConfig(type="quantize", mode="dynamic", **fields)


def test_dynamic_quantization_shrinks_and_keeps_outputs_close(tmp_path: Path):
    model = mlp_model()
    outcome = run_quantize(model, config(), context(tmp_path))
    ops = op_histogram(outcome.model)
    assert ops.get("MatMulInteger") == 2  # the MatMul and the rewritten Gemm
    assert "Gemm" not in ops
    assert outcome.details["ops_quantized"] == 2
    assert outcome.model.ByteSize() < model.ByteSize() * 0.6
    feed = {"x": np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)}
    expected, got = run(model, feed), run(outcome.model, feed)
    assert np.abs(expected - got).max() < 0.05 * np.abs(expected).max()


def test_excluded_node_stays_in_float(tmp_path: Path):
    outcome = run_quantize(mlp_model(), config(exclude=ExcludeSpec(nodes=["fc"])), context(tmp_path))
    ops = op_histogram(outcome.model)
    assert ops.get("MatMulInteger") == 1
    assert "Gemm" not in ops and ops.get("MatMul") == 1  # the excluded Gemm stays float, as MatMul + Add
    assert {"node": "fc", "op_type": "MatMul", "reason": "exclude"} in outcome.details["kept_in_float"]


def test_exclusion_that_matches_nothing_is_an_error(tmp_path: Path):
    with pytest.raises(OptcError, match=r"exclude.nodes: no node named 'fc2'"):
        run_quantize(mlp_model(), config(exclude=ExcludeSpec(nodes=["fc2"])), context(tmp_path))
    with pytest.raises(OptcError, match="matches no node"):
        run_quantize(mlp_model(), config(exclude=ExcludeSpec(patterns=["^conv"])), context(tmp_path))


def test_a_model_with_nothing_to_quantize_is_refused_as_bad_input(tmp_path: Path):
    with pytest.raises(OptcError, match="nothing to quantize") as info:
        run_quantize(relu_model(), config(), context(tmp_path))
    assert not isinstance(info.value, PassError)


def test_matmul_weights_inside_if_branches_are_stored_in_int8(tmp_path: Path):
    """An MLP in both branches of an If: no integer kernel reaches a body, so the weights are stored in int8."""
    inner = mlp_model()
    branch = helper.make_graph(list(inner.graph.node), "network", [], list(inner.graph.output), inner.graph.initializer)
    model = make_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch, name="by_rate")],
        [*inner.graph.input, helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        list(inner.graph.output),
    )
    ctx = context(tmp_path)
    ctx.dataset.inputs["flag"] = np.ones(8, bool)
    outcome = run_quantize(model, config(), ctx)
    assert outcome.details["weights_stored_int8"] == 2  # mm1 in each branch; a Gemm in a body stays float
    feed = {"x": np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32), "flag": np.array(True)}
    expected, got = run(model, feed), run(outcome.model, feed)
    assert np.abs(expected - got).max() < 0.02 * np.abs(expected).max()


def test_a_model_whose_layers_sit_in_if_branches_without_constant_weights_is_told_so(tmp_path: Path):
    """The branches' MatMuls read their weight from a graph input: nothing constant to store, in a body or not."""
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y_branch"], name="mm")],
        "network",
        [],
        [helper.make_tensor_value_info("y_branch", TensorProto.FLOAT, ["batch", 4])],
    )
    model = make_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch, name="by_rate")],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [16, 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    with pytest.raises(OptcError, match=r"outside If/Loop/Scan subgraphs \(2 sit inside them") as info:
        run_quantize(model, config(), context(tmp_path))
    assert "inside If/Loop/Scan bodies optc only stores the weights" in info.value.hint


def test_excluding_every_candidate_is_a_pass_failure(tmp_path: Path):
    with pytest.raises(PassError, match="stayed in float"):
        run_quantize(mlp_model(), config(exclude=ExcludeSpec(nodes=["mm1", "fc"])), context(tmp_path))


def test_already_quantized_model_is_refused(tmp_path: Path):
    quantized = run_quantize(mlp_model(), config(), context(tmp_path)).model
    with pytest.raises(OptcError, match="already quantized") as info:
        run_quantize(quantized, config(), context(tmp_path))
    assert not isinstance(info.value, PassError)  # bad input: exit 2, not a pass failure


def test_gemm_to_matmul_is_exact():
    model = mlp_model()
    rewritten = gemm_to_matmul(model)
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    assert rewritten.graph.node[3].name == "fc"
    onnx.checker.check_model(rewritten)
    feed = {"x": np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)}
    np.testing.assert_allclose(run(model, feed), run(rewritten, feed), rtol=1e-5, atol=1e-5)
    assert [n.op_type for n in model.graph.node][-1] == "Gemm"  # the input model is untouched


@pytest.mark.parametrize(
    ("weight_type", "per_channel", "reduce_range"),
    [("int8", True, True), ("int8", False, False), ("uint8", True, False), ("uint8", False, True)],
)
def test_matmuls_quantized_one_weight_at_a_time_match_onnxruntime_byte_for_byte(
    tmp_path, weight_type, per_channel, reduce_range
):
    model = wide_mlp()
    onnx.save(model, str(tmp_path / "in.onnx"))
    with quiet_root_logger():
        quantize_dynamic(
            str(tmp_path / "in.onnx"),
            str(tmp_path / "ort.onnx"),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    theirs = onnx.load(str(tmp_path / "ort.onnx"))
    ours = quantize_matmuls(model, {"mm1", "mm2"}, weight_type, per_channel, reduce_range)
    assert [n.op_type for n in ours.graph.node] == [n.op_type for n in theirs.graph.node]
    expected = {t.name: numpy_helper.to_array(t) for t in theirs.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in ours.graph.initializer}
    assert got.keys() == expected.keys()
    for name, values in expected.items():
        assert got[name].dtype == values.dtype and got[name].shape == values.shape
        np.testing.assert_array_equal(got[name], values)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    outputs = [ort.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0] for m in (ours, theirs)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_kept_matmul_stays_float():
    quantized = quantize_matmuls(wide_mlp(), {"mm2"}, "int8", True, True)
    ops = [n.op_type for n in quantized.graph.node]
    assert ops.count("MatMul") == 1 and ops.count("MatMulInteger") == 1
    assert "W1" in {t.name for t in quantized.graph.initializer} and "W2" not in {
        t.name for t in quantized.graph.initializer
    }


def test_a_weight_an_if_branch_also_reads_keeps_its_float_copy():
    """Dropping the float initializer once its MatMul was quantized left the branch reading nothing: invalid."""
    model = read_again_in_an_if_branch(wide_mlp(), "W1")
    weight = next(t for t in model.graph.initializer if t.name == "W1")
    quantized = quantize_matmuls(model, {"mm1", "mm2"}, "int8", True, True)
    assert "W1" in {t.name for t in quantized.graph.initializer}
    assert "MatMul" not in [n.op_type for n in quantized.graph.node]
    onnx.checker.check_model(quantized, full_check=True)
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    w1_max = ort.InferenceSession(quantized.SerializeToString()).run(["W1_max"], {"x": x})[0]
    assert w1_max == numpy_helper.to_array(weight).max()


def test_a_weight_shared_by_two_matmuls_is_stored_once():
    """tf2onnx's TimeDistributed reads one kernel from a MatMul per time step: quantizing it once per reader wrote
    ``<W>_quantized`` twice, an invalid model (a Thai word segmenter in the corpus)."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((16, 16)) / 4).astype(np.float32)
    model = make_model(
        [
            helper.make_node("MatMul", ["a", "W"], ["ya"], name="step0"),
            helper.make_node("MatMul", ["b", "W"], ["yb"], name="step1"),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 16]) for n in ("a", "b")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 16]) for n in ("ya", "yb")],
        [numpy_helper.from_array(weight, "W")],
    )
    quantized = quantize_matmuls(model, {"step0", "step1"}, "int8", True, True)
    names = [t.name for t in quantized.graph.initializer]
    assert names.count("W_quantized") == 1 and "W" not in names
    assert [n.op_type for n in quantized.graph.node].count("MatMulInteger") == 2
    onnx.checker.check_model(quantized, full_check=True)
    feed = {n: rng.standard_normal((4, 16)).astype(np.float32) for n in ("a", "b")}
    ya, yb = ort.InferenceSession(quantized.SerializeToString()).run(None, feed)
    # int8 rounding costs up to 0.04 here; a wrong or missing weight would be off by about 1
    np.testing.assert_allclose(ya, feed["a"] @ weight, atol=0.15)
    np.testing.assert_allclose(yb, feed["b"] @ weight, atol=0.15)


def test_warns_when_dynamic_int8_leaves_most_weights_in_float(tmp_path: Path):
    """A CNN with a small classifier head and its Conv weights left float: only the head is quantized, and the
    report says the model is left mostly as it was, naming the op type that holds the rest."""
    rng = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "K"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMean", ["c"], ["pooled"], name="pool", axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["y"], name="head"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(rng.standard_normal((64, 16, 3, 3)).astype(np.float32), "K"),
            numpy_helper.from_array(rng.standard_normal((64, 4)).astype(np.float32), "W"),
        ],
    )
    x = rng.standard_normal((8, 16, 8, 8)).astype(np.float32)
    context = PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": x}, labels=None, source="synthetic"),
    )
    outcome = run_quantize(model, config(conv_weights="float"), context)
    assert outcome.details["weights_int8_share"] == pytest.approx(256 / (256 + 9216), abs=1e-4)
    [warning] = outcome.warnings
    assert "only 2.7% of the model's weights came out int8" in warning and "Conv 100%" in warning
    assert "int8 recipe" in warning and "conv_weights: int8" in warning
    assert run_quantize(mlp_model(), config(), context).warnings == []
    by_default = run_quantize(model, config(), context)  # the Conv's weight stored in int8 too
    assert by_default.details["weights_int8_share"] == 1.0 and by_default.warnings == []


def test_the_fidelity_search_counts_integer_outputs_as_the_gate_does(tmp_path: Path):
    """A text recognizer's argmax ids fell to held-out cosine 0.98 (gate failed, exit 1) while its float outputs,
    all the search compared, stayed at 0.9997. Here two near-tied class columns let int8 flip the ids."""
    rng = np.random.default_rng(0)
    tied = rng.standard_normal((64, 1)).astype(np.float32)
    scores = np.concatenate([tied, tied + 1e-3 * rng.standard_normal((64, 1)).astype(np.float32)], axis=1)
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="features"),
            helper.make_node("MatMul", ["x", "C"], ["scores"], name="classes"),
            helper.make_node("ArgMax", ["scores"], ["ids"], name="argmax", axis=1, keepdims=0),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 64]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "W"),
            numpy_helper.from_array(scores, "C"),
        ],
    )
    x = rng.standard_normal((64, 64)).astype(np.float32)
    data = PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": x}, labels=None, source="x"),
        target="x86-avx2",  # 7-bit weights and integer-exact kernels on any x86 CPU
    )
    outcome = run_quantize(model, config(min_cosine=0.999, smooth=False), data)
    assert [row["node"] for row in outcome.details["kept_in_float"]] == ["classes"]
    session = ort.InferenceSession(outcome.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(["ids"], {"x": x})[0], np.argmax(x @ scores, axis=1))


def test_dynamic_int8_quantizes_lstm_weights_and_static_int8_keeps_the_cell_in_float(tmp_path: Path):
    """The corpus's LSTM word segmenters and wake-word head stayed about as large as fp32 under int8-dynamic while
    every LSTM was kept in float by rule; dynamic int8 now quantizes them and its fidelity search judges them."""
    model = recurrent_model()
    x = np.random.default_rng(1).standard_normal((10, 4, 16)).astype(np.float32)
    dataset = Dataset(inputs={"x": x}, labels=None, source="test")  # time-major: slices along time feed it
    context = PassContext(label="passes[0] quantize (dynamic)", workdir=tmp_path, seed=0, dataset=dataset)
    outcome = run_quantize(model, config(min_cosine=0.99), context)
    assert op_histogram(outcome.model).get("DynamicQuantizeLSTM") == 1
    assert outcome.model.ByteSize() < model.ByteSize() / 2
    reference, quantized = run(model, {"x": x}), run(outcome.model, {"x": x})
    assert np.sum(reference * quantized) / (np.linalg.norm(reference) * np.linalg.norm(quantized)) > 0.99
    static_rule = float_sensitive_nodes(model.graph, outputs=True)
    assert static_rule == {"lstm": "recurrent cell (LSTM): quantization error compounds over time"}
    assert float_sensitive_nodes(model.graph, outputs=False) == {}
