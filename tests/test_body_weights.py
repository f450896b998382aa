"""Weights inside If bodies (Silero VAD as spox writes it: one If on the sample rate, the whole network in each
branch, weights in the branches' Constant nodes, each LSTM's weights built through Unsqueeze): every quantizer and
fp16 store them in fewer bits for float compute; pruning says it cannot reach them."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.data import Dataset
from optc.errors import OptcError
from optc.passes.fp16 import Fp16Config, run_fp16
from optc.passes.prune.config import PruneConfig
from optc.passes.prune.run import run_prune
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.quantize_stored_weights import int8_stored_weights, store_weights_int8
from optc.passes.registry import PassContext
from tests.conftest import make_model

CHANNELS, LENGTH, FILTERS, HIDDEN = 16, 10, 32, 24
RNG = np.random.default_rng(5)


def const(name: str, values: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(values, name), name=f"{name}_const")


def network(prefix: str, scale: float) -> onnx.GraphProto:
    """x [n, C, L] → Conv → [L, n, F] → LSTM → Y_h [1, n, H]; weights in Constant nodes, the LSTM's behind Unsqueeze."""
    weights = {
        "conv_w": RNG.standard_normal((FILTERS, CHANNELS, 3)) * 0.2 * scale,
        "w_raw": RNG.standard_normal((4 * HIDDEN, FILTERS)) * 0.2,
        "r_raw": RNG.standard_normal((4 * HIDDEN, HIDDEN)) * 0.2,
    }
    p = prefix
    nodes = [const(f"{p}_{k}", v.astype(np.float32)) for k, v in weights.items()]
    nodes += [
        const(f"{p}_axes", np.array([0], np.int64)),
        helper.make_node("Unsqueeze", [f"{p}_w_raw", f"{p}_axes"], [f"{p}_W"], name=f"{p}_unsqueeze_w"),
        helper.make_node("Unsqueeze", [f"{p}_r_raw", f"{p}_axes"], [f"{p}_R"], name=f"{p}_unsqueeze_r"),
        helper.make_node("Conv", ["x", f"{p}_conv_w"], [f"{p}_h"], name=f"{p}_conv", pads=[1, 1]),
        helper.make_node("Transpose", [f"{p}_h"], [f"{p}_seq"], name=f"{p}_time_first", perm=[2, 0, 1]),
        helper.make_node(
            "LSTM", [f"{p}_seq", f"{p}_W", f"{p}_R"], ["", f"{p}_y"], name=f"{p}_lstm", hidden_size=HIDDEN
        ),
    ]
    out = helper.make_tensor_value_info(f"{p}_y", TensorProto.FLOAT, [1, "n", HIDDEN])
    return helper.make_graph(nodes, prefix, [], [out])


def model_in_branches() -> onnx.ModelProto:
    """The branch taken depends on the input's mean, as Silero VAD's on the sample rate."""
    return make_model(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], name="mean", keepdims=0),
            const("zero", np.array(0, np.float32)),
            helper.make_node("Greater", ["mean", "zero"], ["positive"], name="positive_mean"),
            helper.make_node(
                "If",
                ["positive"],
                ["y"],
                name="by_sign",
                then_branch=network("then", 1.0),
                else_branch=network("else", 2.0),
            ),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", CHANNELS, LENGTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", HIDDEN])],
    )


def inputs(shift: float) -> np.ndarray:
    return (RNG.standard_normal((8, CHANNELS, LENGTH)) + shift).astype(np.float32)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def assert_close_in_both_branches(original: onnx.ModelProto, result: onnx.ModelProto, tolerance: float) -> None:
    for shift in (1.0, -1.0):  # one batch down each branch
        x = inputs(shift)
        expected, got = run(original, x), run(result, x)
        assert np.linalg.norm(expected - got) / np.linalg.norm(expected) < tolerance


def context(tmp_path: Path, label: str, calibration: Path | None = None, x: np.ndarray | None = None) -> PassContext:
    x = np.concatenate([inputs(1.0), inputs(-1.0)]) if x is None else x
    return PassContext(
        label=label,
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": x}, labels=None, source="test"),
        calibration_data=calibration,
        sample_inputs=[{"x": x[:4]}],
        target="x86-avx2",
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "dynamic"},
        {"mode": "weight_only", "weights": {"bits": 4}},
        {"mode": "static", "preprocess": False},
    ],
    ids=["dynamic", "weight_only", "static"],
)
def test_every_quantizer_stores_the_weights_in_both_branches_in_int8(tmp_path: Path, settings: dict):
    model = model_in_branches()
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=np.concatenate([inputs(1.0), inputs(-1.0)]))
    label = f"passes[0] quantize ({settings['mode']})"
    outcome = run_quantize(model, QuantizeConfig(type="quantize", **settings), context(tmp_path, label, calibration))
    # per branch: the Conv's weight, and the LSTM's W and R once their Unsqueeze is folded into the branch
    assert int8_stored_weights(outcome.model) == 6
    assert outcome.model.ByteSize() < 0.4 * model.ByteSize()
    assert_close_in_both_branches(model, outcome.model, 0.05)


def test_static_int8_reports_the_convs_inside_a_body(tmp_path: Path):
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=inputs(1.0))
    config = QuantizeConfig(type="quantize", mode="static", preprocess=False)
    outcome = run_quantize(model_in_branches(), config, context(tmp_path, "passes[0] quantize (static)", calibration))
    rows = {row["node"]: row for row in outcome.details["kept_in_float"]}
    assert rows["then_conv"]["op_type"] == "Conv"
    assert rows["then_conv"]["reason"] == "inside a body; weights stored in int8"


def test_weights_of_an_if_inside_a_branch_are_stored_too():
    """A rebuilt graph copies its bodies: a branch rebuilt before the If nested in it was changed lost that change."""

    def conv_graph(name: str, inner: onnx.GraphProto | None = None) -> onnx.GraphProto:
        weight = numpy_helper.from_array(RNG.standard_normal((4, 4, 3)).astype(np.float32), f"{name}_w")
        nodes = [helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_y"], name=f"{name}_conv", pads=[1, 1])]
        outputs = [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)]
        if inner is not None:
            nodes.append(
                helper.make_node("If", ["c"], [f"{name}_z"], name=f"{name}_if", then_branch=inner, else_branch=inner)
            )
            outputs.append(helper.make_tensor_value_info(f"{name}_z", TensorProto.FLOAT, None))
        return helper.make_graph(nodes, name, [], outputs, [weight])

    model = make_model(
        [
            helper.make_node(
                "If",
                ["c"],
                ["y", "z"],
                name="outer",
                then_branch=conv_graph("a", conv_graph("b")),
                else_branch=conv_graph("c", conv_graph("d")),
            )
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")],
    )
    stored = store_weights_int8(model, {"a_conv", "b_conv", "c_conv", "d_conv"})
    assert int8_stored_weights(stored) == 6  # a and c; b and d each in both branches of the If they sit in
    x = RNG.standard_normal((1, 4, 6)).astype(np.float32)
    session = ort.InferenceSession(stored.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for flag in (True, False):
        feed = {"x": x, "c": np.array(flag)}
        for want, got in zip(expected.run(None, feed), session.run(None, feed), strict=True):
            assert np.abs(want - got).max() < 0.02 * np.abs(want).max()


def test_fp16_stores_the_weights_in_both_branches_in_fp16(tmp_path: Path):
    model = model_in_branches()
    outcome = run_fp16(model, Fp16Config(type="fp16"), context(tmp_path, "passes[0] fp16"))
    assert len(outcome.details["fp32_weights_stored_fp16"]) == 6
    assert outcome.model.ByteSize() < 0.6 * model.ByteSize()
    assert_close_in_both_branches(model, outcome.model, 0.01)


@pytest.mark.parametrize("method", ["magnitude", "channel"])
def test_pruning_says_the_layers_sit_in_bodies_it_does_not_reach(tmp_path: Path, method: str):
    config = PruneConfig(type="prune", method=method, sparsity=0.5)
    with pytest.raises(OptcError, match=r"2 Conv/Gemm/MatMul node\(s\) sit inside If/Loop/Scan bodies"):
        run_prune(model_in_branches(), config, context(tmp_path, f"passes[0] prune ({method})"))


def recurrence_in_a_loop(passthrough_by_identity: bool) -> onnx.ModelProto:
    """h ← tanh(h·W + b), four steps in a Loop that gets W and b as state slots and passes them on unchanged, as
    tf2onnx unrolls a Keras LSTM (chars2vec) and paddle2onnx hands SLANet's decoder its weights."""
    width = 48
    weights = {"W": RNG.standard_normal((width, width)) * 0.2, "b": RNG.standard_normal(width) * 0.1}
    passed = "W_in"
    body_nodes = [
        helper.make_node("MatMul", ["h_in", "W_in"], ["hw"], name="step_matmul"),
        helper.make_node("Add", ["hw", "b_in"], ["hwb"], name="step_add"),
        helper.make_node("Tanh", ["hwb"], ["h_out"], name="step_tanh"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="step_cond"),
    ]
    if passthrough_by_identity:
        body_nodes.append(helper.make_node("Identity", ["W_in"], ["W_out"], name="pass_w"))
        passed = "W_out"
    body = helper.make_graph(
        body_nodes,
        "step",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("W_in", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("b_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info(n, t, None)
            for n, t in (
                ("cond_out", TensorProto.BOOL),
                ("h_out", TensorProto.FLOAT),
                (passed, TensorProto.FLOAT),
                ("b_in", TensorProto.FLOAT),
            )
        ],
    )
    return make_model(
        [
            const("steps", np.array(4, np.int64)),
            const("always", np.array(True)),
            helper.make_node(
                "Loop", ["steps", "always", "x", "W", "b"], ["y", "W_final", "b_final"], body=body, name="loop"
            ),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )


def loop_context(tmp_path: Path, label: str) -> PassContext:
    x = RNG.standard_normal((16, 48)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    return context(tmp_path, label, tmp_path / "calib.npz", x)


@pytest.mark.parametrize("by_identity", [False, True], ids=["direct", "identity"])
@pytest.mark.parametrize(
    "settings",
    [{"mode": "dynamic"}, {"mode": "weight_only", "weights": {"bits": 4}}, {"mode": "static", "preprocess": False}],
    ids=["dynamic", "weight_only", "static"],
)
def test_a_weight_a_loop_passes_on_unchanged_is_stored_in_int8_where_it_lives(tmp_path, settings, by_identity):
    model = recurrence_in_a_loop(by_identity)
    ctx = loop_context(tmp_path, f"passes[0] quantize ({settings['mode']})")
    outcome = run_quantize(model, QuantizeConfig(type="quantize", **settings), ctx)
    # W is stored where it lives, in the main graph (b, no weight, stays float); static int8 may rename it first
    dequantize = [n for n in outcome.model.graph.node if n.name.endswith("_dequantize")]
    assert len(dequantize) == 1 and int8_stored_weights(outcome.model) == 1 and dequantize[0].output[0].startswith("W")
    int8 = {t.name: t.data_type for t in outcome.model.graph.initializer}[f"{dequantize[0].output[0]}_int8"]
    assert int8 == TensorProto.INT8
    x = RNG.standard_normal((4, 48)).astype(np.float32)
    expected, got = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for m in (model, outcome.model)
    )
    assert np.linalg.norm(expected - got) / np.linalg.norm(expected) < 0.05  # four steps of int8 weights


def test_fp16_stores_a_weight_a_loop_passes_on_in_fp16(tmp_path):
    model = recurrence_in_a_loop(False)
    ctx = loop_context(tmp_path, "passes[0] fp16")
    outcome = run_fp16(model, Fp16Config(type="fp16"), ctx)
    assert outcome.details["fp32_weights_stored_fp16"] == ["W"]


def test_dynamic_int8_of_an_opset_9_model_is_raised_to_opset_11(tmp_path):
    """DynamicQuantizeLinear came with opset 11: a tf2onnx ResNet-50 at opset 9 came out as an invalid model."""
    weight = RNG.standard_normal((16, 8)).astype(np.float32)
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(weight, "W")],
        opset=9,
    )
    x = RNG.standard_normal((8, 16)).astype(np.float32)
    ctx = PassContext(label="q", workdir=tmp_path, seed=0, dataset=Dataset(inputs={"x": x}, labels=None, source="t"))
    outcome = run_quantize(model, QuantizeConfig(type="quantize", mode="dynamic"), ctx)
    onnx.checker.check_model(outcome.model, full_check=True)
    assert {o.domain: o.version for o in outcome.model.opset_import}[""] >= 11
    assert "DynamicQuantizeLinear" in {n.op_type for n in outcome.model.graph.node}


@pytest.mark.parametrize(
    ("settings", "quantized_op", "bodies_in_float"),
    [
        ({"mode": "dynamic"}, "MatMulInteger", True),
        ({"mode": "static", "preprocess": False}, "DequantizeLinear", True),
        # raising the head to 8 bits meets the target: the search needs no more, and the bodies stay int8
        ({"mode": "weight_only", "weights": {"bits": 4}}, "MatMulNBits", False),
    ],
    ids=["dynamic", "static", "weight_only"],
)
def test_body_weights_go_back_to_float_together_where_the_search_cannot_do_without(
    tmp_path: Path, settings, quantized_op, bodies_in_float
):
    """The ranking cannot see inside bodies: where keeping what it can rank in float does not meet the target, the
    bodies' stored weights return to float as one group and the search starts over; a head after the If stays
    quantized."""
    model = model_in_branches()
    for graph in (a.g for a in model.graph.node[3].attribute):
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0].endswith("conv_w"):
                values = numpy_helper.to_array(node.attribute[0].t).copy()
                values[:, :, 1] *= 300  # one tap per filter dwarfs the others: int8 per filter flattens the rest
                node.attribute[0].t.CopyFrom(numpy_helper.from_array(values, node.output[0]))
    head = RNG.standard_normal((HIDDEN, 64)).astype(np.float32)
    model.graph.node.append(helper.make_node("MatMul", ["y", "head"], ["z"], name="head_matmul"))
    model.graph.initializer.append(numpy_helper.from_array(head, "head"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "n", 64]))
    np.savez(tmp_path / "calib.npz", x=np.concatenate([inputs(1.0), inputs(-1.0)]))
    label = f"passes[0] quantize ({settings['mode']})"
    config = QuantizeConfig(type="quantize", min_cosine=0.999, **settings)
    outcome = run_quantize(model, config, context(tmp_path, label, tmp_path / "calib.npz"))
    assert int8_stored_weights(outcome.model) == (0 if bodies_in_float else 6)
    assert quantized_op in {n.op_type for n in outcome.model.graph.node}
    assert outcome.details["fidelity_search"][0]["ok"] is False
    rows = outcome.details.get("kept_in_float", []) + outcome.details.get("stored_kept_in_float", [])
    in_bodies = {f"{side}_{layer}" for side in ("then", "else") for layer in ("conv", "lstm")}
    assert {row["node"] for row in rows if "inside a body" in row["reason"]} == (
        in_bodies if bodies_in_float else set()
    )
