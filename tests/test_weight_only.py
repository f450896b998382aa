"""Weight-only quantization: blockwise 4/8-bit arithmetic, MatMulNBits and QDQ outputs, 8-bit first/last layers,
HQQ, AWQ, embeddings, and the int4 recipes end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from optc.cli.app import app
from optc.data import Dataset
from optc.errors import OptcError
from optc.measure.providers import check_options, session_options
from optc.passes import blockwise
from optc.passes.blockwise import hqq, matmulnbits_tensors, rtn
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.registry import PassContext
from tests.conftest import SAMPLES, make_model, read_again_in_an_if_branch, recurrent_model, report_of

RNG = np.random.default_rng(0)
WIDTH = 64


def heavy_tailed(*shape) -> np.ndarray:
    return (RNG.standard_t(5, shape) * 0.05).astype(np.float32)


def mlp_chain(layers: int = 3, width: int = WIDTH) -> onnx.ModelProto:
    """x → MatMul → Relu → MatMul → Relu → ... → y: every weight [width, width], quantizable."""
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [current, f"W{i}"], [f"h{i}"], name=f"layer{i}"))
        inits.append(numpy_helper.from_array(heavy_tailed(width, width), f"W{i}"))
        current = f"h{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"], name=f"relu{i}"))
            current = f"r{i}"
    nodes[-1].output[0] = "y"
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])],
        inits,
    )


def context(tmp_path: Path, inputs: dict, target: str = "x86-avx2") -> PassContext:
    return PassContext(
        label="passes[0] quantize (weight_only)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs=inputs, labels=None, source="test"),
        sample_inputs=[{k: v[:4] for k, v in inputs.items()}],
        target=target,
    )


def weight_only(**weights) -> QuantizeConfig:
    return QuantizeConfig(type="quantize", mode="weight_only", weights=weights)


def outputs(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


X = {"x": RNG.standard_normal((32, WIDTH)).astype(np.float32)}


@pytest.mark.parametrize(("k", "symmetric"), [(64, False), (64, True), (72, False), (300, False)])
def test_rtn_writes_the_bytes_onnx_runtimes_quantizer_writes(k, symmetric):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weight = heavy_tailed(k, 24)
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24])],
        [numpy_helper.from_array(weight, "W")],
    )
    reference = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=symmetric)
    reference.process()
    theirs = {t.name.rsplit("_", 1)[-1]: numpy_helper.to_array(t) for t in reference.model.model.graph.initializer}
    packed, scales, zero = matmulnbits_tensors(rtn(weight, 4, 32, symmetric))
    assert np.array_equal(theirs["Q4"].reshape(packed.shape), packed)
    assert np.array_equal(theirs["scales"].reshape(scales.shape), scales)
    assert zero is None if symmetric else np.array_equal(theirs["points"].reshape(zero.shape), zero)


def test_hqq_error_is_no_worse_than_rtn():
    weight = heavy_tailed(256, 64)
    plain = np.abs(rtn(weight, 4, 64, symmetric=False).dequantized() - weight).mean()
    fitted = np.abs(hqq(weight, 4, 64).dequantized() - weight).mean()
    assert fitted <= plain * 1.001


def test_matmulnbits_with_the_targets_accuracy_level_and_8_bit_first_and_last_layers(tmp_path):
    model = mlp_chain(layers=4)
    outcome = run_quantize(model, weight_only(), context(tmp_path, X))
    nodes = {n.name: n for n in outcome.model.graph.node if n.op_type == "MatMulNBits"}
    bits = {name: next(a.i for a in n.attribute if a.name == "bits") for name, n in nodes.items()}
    assert bits == {"layer0": 8, "layer1": 4, "layer2": 4, "layer3": 8}
    assert {next(a.i for a in n.attribute if a.name == "accuracy_level") for n in nodes.values()} == {4}
    reasons = {row["node"]: row["reason"] for row in outcome.details["eight_bit_layers"]}
    assert "first" in reasons["layer0"] and "last" in reasons["layer3"]
    assert cosine(outputs(model, X), outputs(outcome.model, X)) > 0.98  # 4-bit random weights; int8 activations
    assert outcome.model.ByteSize() < 0.45 * model.ByteSize()


def test_a_weight_an_if_branch_also_reads_keeps_its_float_copy(tmp_path):
    model = read_again_in_an_if_branch(mlp_chain(), "W1")
    outcome = run_quantize(model, weight_only(), context(tmp_path, X))
    assert "W1" in {t.name for t in outcome.model.graph.initializer}
    assert "MatMul" not in [n.op_type for n in outcome.model.graph.node]
    session = ort.InferenceSession(outcome.model.SerializeToString(), providers=["CPUExecutionProvider"])
    w1 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W1"))
    assert session.run(["W1_max"], {"x": X["x"][:2]})[0] == w1.max()


def test_cuda_target_leaves_accuracy_level_unset_and_eight_bit_can_be_turned_off(tmp_path):
    outcome = run_quantize(mlp_chain(), weight_only(eight_bit="none"), context(tmp_path, X, target="cuda"))
    nodes = [n for n in outcome.model.graph.node if n.op_type == "MatMulNBits"]
    assert all(not any(a.name == "accuracy_level" for a in n.attribute) for n in nodes)
    assert outcome.details["four_bit_layers"] == 3 and outcome.details["eight_bit_layers"] == []


def test_qdq_format_is_standard_onnx_opset_21_and_runs(tmp_path):
    model = mlp_chain()
    outcome = run_quantize(model, weight_only(format="qdq", symmetric=True), context(tmp_path, X))
    onnx.checker.check_model(outcome.model)
    assert next(o.version for o in outcome.model.opset_import if o.domain in ("", "ai.onnx")) == 21
    dequantize = [n for n in outcome.model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequantize) == 3 and all(n.domain == "" for n in outcome.model.graph.node)
    codes = {t.name: t.data_type for t in outcome.model.graph.initializer}
    assert TensorProto.INT4 in codes.values()
    assert cosine(outputs(model, X), outputs(outcome.model, X)) > 0.99


def test_awq_scales_inputs_with_outlier_channels_and_beats_rtn(tmp_path):
    """A few input channels 30x larger than the rest, as in LLMs: scaling them first keeps their precision."""
    model = mlp_chain(layers=3)
    x = RNG.standard_normal((64, WIDTH)).astype(np.float32)
    x[:, :3] *= 30
    data = {"x": x}
    reference = outputs(model, data)
    errors = {}
    for algorithm in ("rtn", "awq"):
        outcome = run_quantize(model, weight_only(algorithm=algorithm, eight_bit="none"), context(tmp_path, data))
        errors[algorithm] = float(np.linalg.norm(outputs(outcome.model, data) - reference))
        if algorithm == "awq":
            assert outcome.details["awq_scaled_inputs"] >= 1
            assert any(n.op_type == "Mul" and n.name.endswith("_awq") for n in outcome.model.graph.node)
    assert errors["awq"] < errors["rtn"]


def test_embedding_tables_become_gather_block_quantized(tmp_path):
    table = heavy_tailed(100, WIDTH)
    model = make_model(
        [
            helper.make_node("Gather", ["embedding", "ids"], ["e"], name="embed"),
            helper.make_node("MatMul", ["e", "W"], ["y"], name="proj"),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, WIDTH])],
        [numpy_helper.from_array(table, "embedding"), numpy_helper.from_array(heavy_tailed(WIDTH, WIDTH), "W")],
    )
    ids = {"ids": RNG.integers(0, 100, (4, 8)).astype(np.int64)}
    outcome = run_quantize(model, weight_only(embeddings=True), context(tmp_path, ids))
    assert "GatherBlockQuantized" in {n.op_type for n in outcome.model.graph.node}
    assert "embedding" not in {t.name for t in outcome.model.graph.initializer}
    assert cosine(outputs(model, ids), outputs(outcome.model, ids)) > 0.98


def test_weight_only_settings_are_validated():
    with pytest.raises(ValidationError, match="power of two"):
        weight_only(block_size=48)
    with pytest.raises(ValidationError, match="weights only applies to mode: weight_only"):
        QuantizeConfig(type="quantize", mode="dynamic", weights={"bits": 4})
    with pytest.raises(ValidationError, match="do not apply to mode: weight_only"):
        QuantizeConfig(type="quantize", mode="weight_only", activation_type="uint8")


def test_an_unknown_eight_bit_layer_and_a_model_without_matmuls_are_refused(tmp_path):
    with pytest.raises(OptcError, match="no quantizable MatMul named 'nope'"):
        run_quantize(mlp_chain(), weight_only(eight_bit=["nope"]), context(tmp_path, X))
    relu = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    with pytest.raises(OptcError, match="no MatMul or Conv node with constant weights, so weight-only quantization"):
        run_quantize(relu, weight_only(), context(tmp_path, {"x": np.ones((4, 4), np.float32)}))


def test_int4_recipe_on_the_sample_encoder(runner, tmp_path):
    out = tmp_path / "bert.int4.onnx"
    args = ["compress", str(SAMPLES / "tiny_bert.onnx"), "-r", "int4", "-o", str(out)]
    result = runner.invoke(app, [*args, "--data", str(SAMPLES / "tiny_bert_data.npz")])
    assert result.exit_code == 0, result.output
    report = json.loads(report_of(out).read_text())
    details = report["passes"][0]["details"]
    assert details["four_bit_layers"] > 0 and details["format"] == "matmulnbits"
    assert report["size_ratio"] < 0.9
    assert "MatMulNBits" in {n.op_type for n in onnx.load_model(str(out)).graph.node}


def test_quantizing_by_column_chunks_gives_the_same_codes(monkeypatch):
    weight = np.random.default_rng(3).standard_normal((96, 40)).astype(np.float32)
    whole = rtn(weight, 4, 32, symmetric=False)
    monkeypatch.setattr(blockwise, "CHUNK_BYTES", 96 * 4 * 7)  # 7 columns per chunk: uneven groups
    chunked = blockwise.by_column_chunks(weight, lambda part: rtn(part, 4, 32, symmetric=False))
    np.testing.assert_array_equal(chunked.codes, whole.codes)
    np.testing.assert_array_equal(chunked.scales, whole.scales)
    np.testing.assert_array_equal(chunked.zero_points, whole.zero_points)


def test_checks_see_the_numbers_the_deployed_model_produces(tmp_path):
    """Fidelity searches and verification run on check sessions; at accuracy_level 4 MatMulNBits computes with int8
    activations only on its prepacked path, so a check session must prepack as a deployed one does."""
    quantized = run_quantize(mlp_chain(), weight_only(eight_bit="none"), context(tmp_path, X)).model
    deployed = ort.InferenceSession(quantized.SerializeToString(), session_options(1), ["CPUExecutionProvider"])
    checked = ort.InferenceSession(quantized.SerializeToString(), check_options(), ["CPUExecutionProvider"])
    np.testing.assert_array_equal(checked.run(None, X)[0], deployed.run(None, X)[0])


def test_a_matmul_feeding_log_stays_float_where_int8_compute_would_zero_its_input(tmp_path):
    """A log-mel front-end (openWakeWord's melspectrogram): at accuracy_level 4 MatMulNBits quantizes its input to
    int8 per block, the quiet frequency bins of a power spectrum share blocks with loud ones and round to zero, and
    the filterbank's Log turned that into errors of 59. A MatMul reaching a Div denominator through a reduction
    (RMSNorm's mean of squares, behind every LLM projection) stays quantized: one rounded element averages away."""
    bins = np.arange(WIDTH)
    spectrum = np.where(bins % 2 == 0, 1e-6, 1e2) * RNG.uniform(0.5, 1.5, (32, WIDTH))
    quiet_filters = np.zeros((WIDTH, 8), np.float32)
    for column in range(8):  # each reads a few quiet (even) bins only
        quiet_filters[2 * column * 4 : 2 * column * 4 + 8 : 2, column] = 1.0
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "F"], ["mel"], name="filterbank"),
            helper.make_node("Log", ["mel"], ["log_mel"], name="log"),
            helper.make_node("MatMul", ["x", "W"], ["h"], name="dense"),
            helper.make_node("Pow", ["h", "two"], ["square"], name="square"),
            helper.make_node("ReduceMean", ["square"], ["mean_square"], name="mean", axes=[1], keepdims=1),
            helper.make_node("Sqrt", ["mean_square"], ["rms"], name="rms"),
            helper.make_node("Div", ["h", "rms"], ["normed"], name="normalize"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [
            helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, ["n", 8]),
            helper.make_tensor_value_info("normed", TensorProto.FLOAT, ["n", WIDTH]),
        ],
        [
            numpy_helper.from_array(quiet_filters, "F"),
            numpy_helper.from_array(heavy_tailed(WIDTH, WIDTH), "W"),
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        ],
    )
    feed = {"x": spectrum.astype(np.float32)}
    outcome = run_quantize(model, weight_only(eight_bit="none"), context(tmp_path, feed))
    assert [row["node"] for row in outcome.details["kept_in_float"]] == ["filterbank"]
    assert "Log 'log'" in outcome.details["kept_in_float"][0]["reason"]
    assert outcome.details["weights_quantized"] == 1  # the MatMul normalized by its RMS
    got = outputs(outcome.model, feed)
    assert np.isfinite(got).all() and cosine(got, outputs(model, feed)) > 0.9999
    off = QuantizeConfig(type="quantize", mode="weight_only", keep_float_sensitive=False)
    broken = run_quantize(model, off, context(tmp_path, feed)).model
    assert not np.isfinite(outputs(broken, feed)).all() or cosine(outputs(broken, feed), outputs(model, feed)) < 0.99


def test_awq_scales_only_the_inputs_of_4_bit_layers(tmp_path):
    """A layer at 8 bits (first/last, or raised there by a fidelity target) keeps its input unscaled: at int8 compute
    MatMulNBits also rounds the scaled input, and a wake-word head's layer raised to 8 bits with its AWQ scaling kept
    stayed at cosine 0.91 (0.9996 unscaled)."""
    model = mlp_chain(layers=3)
    x = RNG.standard_normal((64, WIDTH)).astype(np.float32)
    x[:, :3] *= 30  # outlier channels: AWQ scales x when layer0 is at 4 bits (previous test)
    data = {"x": x}

    def scaled(eight_bit) -> tuple[set[str], int]:
        outcome = run_quantize(model, weight_only(algorithm="awq", eight_bit=eight_bit), context(tmp_path, data))
        muls = {n.input[0] for n in outcome.model.graph.node if n.op_type == "Mul" and n.name.endswith("_awq")}
        return muls, outcome.details["awq_scaled_inputs"]

    assert "x" in scaled("none")[0]
    inputs, count = scaled(["layer0"])
    assert "x" not in inputs and count == len(inputs)


def lstm_head() -> onnx.ModelProto:
    """An LSTM wake-word head: x → LSTM → a small MatMul classifier; the LSTM holds nearly all the weights."""
    model = recurrent_model()
    model.graph.node.append(helper.make_node("MatMul", ["y", "head"], ["score"], name="classifier"))
    model.graph.initializer.append(numpy_helper.from_array(np.ones((32, 2), np.float32), "head"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, "n", 2]))
    return model


def test_recurrent_weights_are_stored_in_8_bits(tmp_path: Path):
    """The LSTM head's 4-bit model came out 0.1 % larger than fp32 (its LSTM left float) and was written with exit
    0; its recurrent weights are stored in int8 for float compute now, as Conv weights are."""
    model = lstm_head()
    x = {"x": np.random.default_rng(0).standard_normal((10, 4, 16)).astype(np.float32)}
    outcome = run_quantize(model, weight_only(), context(tmp_path, x))
    assert outcome.details["weights_stored_int8"] == 2  # W and R
    assert outcome.model.ByteSize() < model.ByteSize() * 0.4
    np.testing.assert_allclose(outputs(outcome.model, x), outputs(model, x), atol=0.05)


def test_a_model_no_smaller_after_weight_only_quantization_is_refused(tmp_path: Path):
    """A model whose weights are an embedding table, which weight-only quantization leaves float unless asked
    (embeddings: true): the result would be no smaller, so it is refused, naming what holds the weights."""
    model = make_model(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
            helper.make_node("MatMul", ["embedded", "head"], ["y"], name="classifier"),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 2])],
        [
            numpy_helper.from_array(np.random.default_rng(0).standard_normal((4096, 32)).astype(np.float32), "table"),
            numpy_helper.from_array(np.ones((32, 2), np.float32), "head"),
        ],
    )
    ids = {"ids": np.random.default_rng(1).integers(0, 4096, (8, 4))}
    with pytest.raises(OptcError, match=r"4-bit model would be no smaller .*read by Gather 100%") as info:
        run_quantize(model, weight_only(), context(tmp_path, ids))
    assert "embeddings: true" in info.value.hint
