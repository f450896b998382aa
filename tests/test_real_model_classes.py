"""Each class of failure the real-model corpus showed, distilled into a tiny graph: valid models accepted, native
crashes contained, nothing degraded handed over with exit 0, and nothing written outside the output paths."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.cli.app import app
from optc.data import Dataset
from optc.errors import OptcError, PassError
from optc.isolation import NativeCrash, run_isolated
from optc.passes.fp16 import Fp16Config, run_fp16
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.registry import PassContext
from tests.conftest import CNN, CNN_TEST, SAMPLES, make_model, mlp_model, recurrent_model, report_of

RNG = np.random.default_rng(0)


def context(tmp_path: Path, inputs: dict, target: str = "x86-vnni") -> PassContext:
    return PassContext(
        label="passes[0]",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs=inputs, labels=None, source="test"),
        sample_inputs=[{k: v[:4] for k, v in inputs.items()}],
        target=target,
    )


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def vector_model(nodes, inits=(), width: int = 16) -> onnx.ModelProto:
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in dict(inits).items()],
    )


# --------------------------------------------------------------------------------------------- fp16


def test_fp16_keeps_the_node_that_loses_precision_instead_of_refusing(tmp_path):
    """x·1000.3 − x·1000: fp16 stores 1000.3 as 1000.5, so the difference comes out 0.5·x, not 0.3·x (67 % off).
    (A projection after it gives fp16 a weight to halve: a conversion no smaller than fp32 is refused.)"""
    model = vector_model(
        [
            helper.make_node("Mul", ["x", "k1"], ["a"], name="scale_a"),
            helper.make_node("Mul", ["x", "k2"], ["b"], name="scale_b"),
            helper.make_node("Sub", ["a", "b"], ["d"], name="difference"),
            helper.make_node("MatMul", ["d", "w"], ["y"], name="projection"),
        ],
        {"k1": np.full(64, 1000.3), "k2": np.full(64, 1000.0), "w": RNG.standard_normal((64, 64)) / 8},
        width=64,
    )
    x = {"x": RNG.standard_normal((32, 64)).astype(np.float32)}
    outcome = run_fp16(model, Fp16Config(type="fp16"), context(tmp_path, x))
    search = outcome.details["fallback_search"]
    assert search[0]["max_relative_error"] > 0.1 and any(t["ok"] for t in search)
    kept = {row["node"] for row in outcome.details["kept_in_float"] if "tolerance" in row["reason"]}
    assert "scale_a" in kept and outcome.details["output_error"] <= 0.01


def test_fp16_refuses_an_already_quantized_model(tmp_path):
    quantized = run_quantize(
        mlp_model(),
        QuantizeConfig(type="quantize", mode="dynamic"),
        context(tmp_path, {"x": RNG.standard_normal((8, 16)).astype(np.float32)}),
    ).model
    with pytest.raises(OptcError, match="already quantized") as info:
        run_fp16(quantized, Fp16Config(type="fp16"), context(tmp_path, {"x": np.ones((4, 16), np.float32)}))
    assert not isinstance(info.value, PassError)  # bad input, exit 2, as int8 does


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_native_crash_in_an_isolated_step_becomes_a_message():
    with pytest.raises(NativeCrash, match="crashed \\(SIGSEGV\\)"):
        run_isolated("passes[0] fp16", _segfault)
    with pytest.raises(ZeroDivisionError):
        run_isolated("passes[0] fp16", lambda: 1 / 0)
    assert run_isolated("passes[0] fp16", lambda: np.arange(3)).tolist() == [0, 1, 2]


def test_fp16_of_a_recurrent_model_keeps_the_cell_in_fp32(tmp_path):
    hidden, width = 8, 16
    weights = {
        "W": RNG.standard_normal((1, 4 * hidden, width)) * 0.1,
        "R": RNG.standard_normal((1, 4 * hidden, hidden)) * 0.1,
    }
    model = make_model(
        [helper.make_node("LSTM", ["x", "W", "R"], ["", "y"], hidden_size=hidden, name="lstm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", hidden])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()],
    )
    x = {"x": RNG.standard_normal((5, 4, width)).astype(np.float32)}
    ctx = context(tmp_path, x)
    ctx.dataset.per_sample = False
    outcome = run_fp16(model, Fp16Config(type="fp16"), ctx)
    kept = {row["node"]: row["reason"] for row in outcome.details["kept_in_float"]}
    assert kept["lstm"] == "unsafe in fp16"


# --------------------------------------------------------------------------------------------- int8


def test_models_with_only_ai_onnx_ml_operators_are_refused_plainly(tmp_path):
    tree = make_model(
        [helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm="L2")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    tree.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    x = {"x": RNG.standard_normal((8, 4)).astype(np.float32)}
    for mode, message in (("static", "none of which int8 can quantize"), ("dynamic", "nothing to quantize")):
        with pytest.raises(OptcError, match=message) as info:
            run_quantize(tree, QuantizeConfig(type="quantize", mode=mode), context(tmp_path, x))
        assert not isinstance(info.value, PassError)


def test_repeated_and_spelled_out_opset_entries_do_not_stop_the_quantizer(tmp_path):
    model = mlp_model()
    del model.opset_import[:]
    model.opset_import.extend([helper.make_opsetid("ai.onnx", 17), helper.make_opsetid("ai.onnx", 17)])
    x = {"x": RNG.standard_normal((8, 16)).astype(np.float32)}
    outcome = run_quantize(model, QuantizeConfig(type="quantize", mode="dynamic"), context(tmp_path, x))
    assert outcome.details["ops_quantized"] == 2


def mel_front_end() -> onnx.ModelProto:
    """power spectrum → mel filterbank MatMul → Log: the filterbank output's small values are what Log reads."""
    return make_model(
        [
            helper.make_node("Mul", ["x", "x"], ["power"], name="power"),
            helper.make_node("MatMul", ["power", "mel"], ["mel_power"], name="filterbank"),
            helper.make_node("Add", ["mel_power", "eps"], ["safe"], name="floor"),
            helper.make_node("Log", ["safe"], ["y"], name="log"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [
            numpy_helper.from_array(np.abs(RNG.standard_normal((64, 16))).astype(np.float32) * 0.05, "mel"),
            numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        ],
    )


def test_dynamic_int8_keeps_a_filterbank_feeding_log_in_float(tmp_path):
    x = {"x": (RNG.standard_normal((16, 64)) * np.logspace(-3, 0, 16)[:, None]).astype(np.float32)}
    with pytest.raises(PassError, match="stayed in float") as info:
        run_quantize(mel_front_end(), QuantizeConfig(type="quantize", mode="dynamic"), context(tmp_path, x))
    assert "1 MatMul" in info.value.message  # the only candidate feeds the Log, so it stays float


def test_static_int8_keeps_a_sigmoid_score_output_in_float(tmp_path):
    model = vector_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("Sigmoid", ["h"], ["y"], name="score"),
        ],
        {"W": RNG.standard_normal((16, 16)) * 0.2},
    )
    x = {"x": RNG.standard_normal((32, 16)).astype(np.float32)}
    outcome = run_quantize(model, QuantizeConfig(type="quantize", mode="static"), context(tmp_path, x))
    kept = {row["node"]: row["reason"] for row in outcome.details["kept_in_float"]}
    assert "graph output" in kept["score"] and outcome.details["ops_quantized"] >= 1


def test_min_cosine_keeps_the_fewest_damaged_nodes_in_float(tmp_path):
    """Percentile 80 clips the CNN's activations (cosine ~0.96); a target of 0.98 is met with some nodes in float."""
    config = QuantizeConfig(
        type="quantize", mode="static", min_cosine=0.98, calibration={"method": "percentile", "percentile": 80}
    )
    calib = dict(np.load(SAMPLES / "digits_calib.npz"))
    ctx = context(tmp_path, calib)
    ctx.calibration_data = SAMPLES / "digits_calib.npz"
    outcome = run_quantize(onnx.load_model(str(CNN)), config, ctx)
    search = outcome.details["fidelity_search"]
    assert not search[0]["ok"]  # what the search costs: tests/test_ranking.py
    fewest = min(t["kept_in_float"] for t in search if t["ok"])
    kept = [row for row in outcome.details["kept_in_float"] if "fidelity target" in row["reason"]]
    assert 0 < len(kept) == fewest < 5 and outcome.details["ops_quantized"] > 0


def test_calibration_ranges_ignore_infinities_and_widen_constants():
    from optc.passes.calibration import MinMaxCollector, usable_range

    collector = MinMaxCollector(moving_average=False, averaging_constant=0.01)
    collector.update({"logmel": np.array([-np.inf, -3.0, 2.0], np.float32), "silence": np.full(4, -np.inf)})
    assert collector.ranges() == {"logmel": (-3.0, 2.0)}  # a tensor never finite has no range at all
    low, high = usable_range(5.0, 5.0)
    assert low == 0.0 and high == 5.0
    low, high = usable_range(0.0, 0.0)
    assert high > low


# --------------------------------------------------------------------------------------- end to end


def test_builtin_int8_without_calibration_data_is_flagged_not_shipped(runner, tmp_path):
    out = tmp_path / "cnn.int8.onnx"
    result = runner.invoke(app, ["compress", str(CNN), "-r", "int8", "-o", str(out), "--data", str(CNN_TEST)])
    assert result.exit_code == 1
    assert "require_calibration_data" in result.stderr and "calibrated on synthetic inputs" in result.stderr
    assert not out.exists() and (tmp_path / "cnn.int8.rejected.onnx").exists()


@pytest.mark.parametrize("recipe", ["prune-magnitude-50", "prune-channels-25"])
def test_builtin_pruning_without_evaluation_data_is_flagged_not_shipped(runner, tmp_path, recipe):
    """Pruning a trained vision transformer passed the 0.98 cosine gate on synthetic inputs and scored 0.72 on real
    images."""
    out = tmp_path / "cnn.pruned.onnx"
    result = runner.invoke(app, ["compress", str(CNN), "-r", recipe, "-o", str(out), "--min-cosine", "-1"])
    assert result.exit_code == 1
    assert "require_evaluation_data" in result.stderr and "measured on synthetic inputs" in result.stderr
    assert not out.exists() and (tmp_path / "cnn.pruned.rejected.onnx").exists()
    given = runner.invoke(
        app, ["compress", str(CNN), "-r", recipe, "-o", str(out), "--min-cosine", "-1", "--data", str(CNN_TEST)]
    )
    assert given.exit_code == 0, given.stderr


def test_fidelity_is_measured_at_the_deployment_batch_and_pooled_for_tiny_outputs(runner, tmp_path):
    model = save(
        vector_model(
            [
                helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                helper.make_node("ReduceMean", ["h"], ["y"], keepdims=1, name="score"),
            ],
            {"W": RNG.standard_normal((16, 16))},
        ),
        tmp_path / "score.onnx",
    )
    model_proto = onnx.load_model(str(model))
    model_proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    save(model_proto, model)
    out = tmp_path / "o.onnx"
    result = runner.invoke(
        app, ["compress", str(model), "-r", "int8-dynamic", "-o", str(out), "--on-gate-failure", "write"]
    )
    assert result.exit_code in (0, 1), result.output
    accuracy = json.loads(report_of(out).read_text())["measurements"][0]["accuracy"]
    assert accuracy["batch_size"] == 1
    assert accuracy["outputs"][0]["pooled"] is True  # one value per sample: compared over all samples together


def test_ort_tools_leave_nothing_in_the_working_directory(runner, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = ["compress", str(CNN), "-r", "int8", "-o", str(tmp_path / "out" / "m.onnx"), "--data", str(CNN_TEST)]
    result = runner.invoke(app, [*args, "--calibration-data", str(SAMPLES / "digits_calib.npz")])
    assert result.exit_code == 0, result.output
    assert list(cwd.iterdir()) == []  # no sym_shape_infer_temp.onnx, no <uuid>.data


def test_a_scalar_input_is_fed_not_refused(runner, tmp_path):
    model = make_model(
        [helper.make_node("Mul", ["x", "gain"], ["g"]), helper.make_node("MatMul", ["g", "W"], ["y"], name="mm")],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16]),
            helper.make_tensor_value_info("gain", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(RNG.standard_normal((16, 8)).astype(np.float32), "W")],
    )
    path = save(model, tmp_path / "scalar.onnx")
    result = runner.invoke(app, ["compress", str(path), "-r", "int8-dynamic", "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == 0, result.output


def test_encoder_detection_reads_head_splits_computed_from_shapes():
    """PyTorch exports build the head-split target as Concat(batch, seq, heads, head_dim) from Shape/Gather."""
    from optc.passes.fuse.transformer import detect_encoder

    def const(name: str, value) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.int64)))

    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("Shape", ["ln"], ["shape"]),
        const("zero", 0),
        const("one", 1),
        helper.make_node("Gather", ["shape", "zero"], ["batch"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"]),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Unsqueeze", ["seq", "axis0"], ["seq1"]),
        const("heads", [2]),
        const("head_dim", [4]),
        helper.make_node("Concat", ["batch1", "seq1", "heads", "head_dim"], ["target"], axis=0),
        helper.make_node("Reshape", ["ln", "target"], ["split"]),
        helper.make_node("Transpose", ["split"], ["heads_first"], perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["heads_first"], ["y"], axis=-1),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, "seq", 4])],
        [
            numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
            numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        ],
    )
    assert detect_encoder(model) == (2, 8)


def test_fp16_of_an_if_whose_branch_reads_an_outer_tensor(tmp_path):
    """The openWakeWord pattern: If(score ≥ t) runs a verifier MLP, else passes the outer score through."""
    verifier = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Sigmoid", ["h"], ["verified"])],
        "then",
        [],
        [helper.make_tensor_value_info("verified", TensorProto.FLOAT, ["n", 64])],
    )
    passthrough = helper.make_graph(
        [helper.make_node("Identity", ["score"], ["kept"])],
        "else",
        [],
        [helper.make_tensor_value_info("kept", TensorProto.FLOAT, ["n", 64])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "W_head"], ["logits"], name="head"),
        helper.make_node("Sigmoid", ["logits"], ["score"], name="score"),
        helper.make_node("ReduceMax", ["score"], ["top"], keepdims=0, name="top"),
        helper.make_node("Greater", ["top", "threshold"], ["confident"], name="gate"),
        helper.make_node("If", ["confident"], ["y"], then_branch=verifier, else_branch=passthrough, name="verify"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [
            numpy_helper.from_array(RNG.standard_normal((64, 64)).astype(np.float32) * 0.3, "W"),
            numpy_helper.from_array(RNG.standard_normal((64, 64)).astype(np.float32) * 0.3, "W_head"),
            numpy_helper.from_array(np.array(0.5, np.float32), "threshold"),
        ],
    )
    x = {"x": RNG.standard_normal((8, 64)).astype(np.float32)}
    outcome = run_fp16(model, Fp16Config(type="fp16"), context(tmp_path, x))
    assert outcome.details["output_error"] <= 0.01
    weights = {t.name: t.data_type for t in outcome.model.graph.initializer}
    assert weights["W_head"] == TensorProto.FLOAT16  # outside the If, the model is fp16
    # the branch computes in fp32, from its weight stored in fp16 and cast back outside the If
    assert outcome.details["fp32_weights_stored_fp16"] == ["W"] and weights["W_fp16"] == TensorProto.FLOAT16


def compress_with_data(runner, tmp_path: Path, model: Path, recipe: str, width: int):
    """``optc compress`` with seeded normal calibration (seed 1) and evaluation (seed 2) data for input ``x``."""
    for name, seed in (("calib", 1), ("eval", 2)):
        inputs = np.random.default_rng(seed).standard_normal((64, width)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", x=inputs)
    out = tmp_path / "o.onnx"
    data = ["--data", str(tmp_path / "eval.npz"), "--calibration-data", str(tmp_path / "calib.npz")]
    return runner.invoke(app, ["compress", str(model), "-r", recipe, "-o", str(out), *data]), out


def test_prune_auto_still_quantizes_a_model_whose_channels_it_cannot_cut(runner, tmp_path):
    """Wake-word classifiers and GRU translators of the corpus: every channel reaches a graph output or an op
    channel surgery cannot shrink, and prune-auto used to refuse them outright; static int8 alone is usable."""
    rng = np.random.default_rng(0)
    model = save(
        make_model(  # an embedding: scored by cosine, not by an argmax that int8 noise can flip between near ties
            [helper.make_node("Gemm", ["x", "W", "b"], ["embedding"], name="only_layer")],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 16])],
            [
                numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
                for name, shape in (("W", (16, 16)), ("b", (16,)))
            ],
        ),
        tmp_path / "one_layer.onnx",
    )
    result, out = compress_with_data(runner, tmp_path, model, "prune-auto", width=16)
    assert result.exit_code == 0, result.output
    prune, _, quantize = json.loads(report_of(out).read_text())["passes"]
    assert prune["skipped"].startswith("no channel group can be pruned: reaches graph output 'embedding'")
    assert quantize["skipped"] is None and quantize["details"]["ops_quantized"] == 1
    assert "passes[0] prune (channel) skipped (optional)" in result.stderr
    assert {n.op_type for n in onnx.load(str(out)).graph.node} >= {"QuantizeLinear", "DequantizeLinear", "Gemm"}


@pytest.mark.parametrize("mode", ["weight_only", "dynamic"])
def test_weights_also_listed_as_graph_inputs_are_still_quantized(tmp_path, mode):
    """A face detector at IR 3 lists every weight among the graph inputs, as IR < 4 required: int4 refused it for
    having no Conv with constant weights."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv.w")
    model = make_model(
        [helper.make_node("Conv", ["x", "conv.w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8]),
            helper.make_tensor_value_info("conv.w", TensorProto.FLOAT, [8, 3, 3, 3]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [weight],
        opset=9,
    )
    model.ir_version = 3
    x = {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
    outcome = run_quantize(model, QuantizeConfig(type="quantize", mode=mode), context(tmp_path, x))
    assert outcome.details["weights_stored_int8"] == 1
    assert [i.name for i in outcome.model.graph.input] == ["x"]


@pytest.mark.parametrize("recipe", ["int8", "int8-accurate"])
def test_builtin_static_int8_that_leaves_the_model_no_smaller_fails_its_size_gate(runner, tmp_path, recipe):
    """A Thai segmenter's static int8 kept its LSTM weights and a quarter of its Conv weights' worth in float and
    came out 1.06x fp32's size at 1.00x its speed, with exit 0. Here the Quantize/Dequantize pairs of one small
    MatMul outweigh what its int8 weight saves."""
    rng = np.random.default_rng(0)
    model = save(
        make_model(
            [helper.make_node("MatMul", ["x", "W"], ["embedding"], name="mm")],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", 8])],
            [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")],
        ),
        tmp_path / "small.onnx",
    )
    result, out = compress_with_data(runner, tmp_path, model, recipe, width=8)
    assert result.exit_code == 1, result.output
    assert "max_size_ratio" in result.stderr and not out.exists()


def with_weights_in_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as paddle2onnx writes it: every initializer a Constant node."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in out.graph.initializer]
    nodes = constants + list(out.graph.node)
    del out.graph.initializer[:]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


@pytest.mark.parametrize("mode", ["dynamic", "weight_only", "magnitude"])
def test_weights_held_in_constant_nodes_are_weights_to_every_pass_that_reads_weights(tmp_path, mode):
    """PP-OCRv4's detector, recognizer and classifier (paddle2onnx) keep every weight in a Constant node: int4 refused
    them as having "no MatMul or Conv node with constant weights" and prune-magnitude-50 as having nothing to prune."""
    from optc.passes.prune.config import PruneConfig
    from optc.passes.prune.run import run_prune

    model = with_weights_in_constant_nodes(mlp_model(hidden=256))
    x = RNG.standard_normal((16, 16)).astype(np.float32)
    ctx = context(tmp_path, {"x": x})
    if mode == "magnitude":
        config = PruneConfig(type="prune", method="magnitude", sparsity=0.5, dense_first_last=False)
        result = run_prune(model, config, ctx).model
        zero_share = [np.mean(numpy_helper.to_array(t) == 0) for t in result.graph.initializer if len(t.dims) == 2]
        assert len(zero_share) == 2 and min(zero_share) > 0.3
    else:
        config = QuantizeConfig(type="quantize", mode=mode)
        result = run_quantize(model, config, ctx).model
        low_precision = [t for t in result.graph.initializer if t.data_type in (TensorProto.INT8, TensorProto.UINT8)]
        assert sum(int(np.prod(t.dims)) for t in low_precision) >= 16 * 256 // 2
    assert result.ByteSize() < model.ByteSize() or mode == "magnitude"


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_of_a_model_whose_if_branches_read_a_quantized_layer_stays_in_order(tmp_path, mode):
    """Silero VAD (half, 16k op15): ONNX Runtime's quantizers order their output by node inputs alone, so an If whose
    condition is a graph input went ahead of the layer its branches read (a Squeeze of the LSTM's state), and int8
    and int8-dynamic ended "not a valid ONNX model" (exit 3)."""
    rng = np.random.default_rng(0)
    out = helper.make_tensor_value_info
    model = recurrent_model()  # x → LSTM (its weights quantized by ONNX Runtime in either mode) → y
    lstm = model.graph.node[0]
    lstm.output[1] = "state"
    then = helper.make_graph([helper.make_node("Relu", ["a"], ["t"], name="relu_b")], "then", [], [out("t", 1, None)])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"], name="neg")], "else", [], [out("e", 1, None)])
    model.graph.node.extend(
        [
            helper.make_node("Relu", ["state"], ["a"], name="relu"),
            helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other, name="if"),
        ]
    )
    model.graph.input.append(out("flag", TensorProto.BOOL, []))
    x = rng.standard_normal((64, 10, 1, 16)).astype(np.float32)
    flags = rng.random(64) < 0.5
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, x=x, flag=flags)
    ctx = dataclasses.replace(context(tmp_path, {"x": x, "flag": flags}), calibration_data=calibration)
    result = run_quantize(model, QuantizeConfig(type="quantize", mode=mode), ctx).model
    onnx.checker.check_model(result)
    session = ort.InferenceSession(result.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x[0], "flag": np.array(True)})[0].shape == (1, 1, 32)
