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


def context(tmp_path: Path, label: str, calibration: Path | None = None) -> PassContext:
    x = np.concatenate([inputs(1.0), inputs(-1.0)])
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
