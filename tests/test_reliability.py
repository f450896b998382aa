"""The bad-input catalogue: every malformed or hostile model ends in exit 2, one message naming the file and the
problem, and nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.cli import app
from tests.conftest import DYNAMIC_PASS, SAMPLES, make_model, mlp_model


def with_graph_edit(edit):
    def build() -> bytes:
        model = mlp_model()
        edit(model)
        return model.SerializeToString()

    return build


def newer_opset(model):
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 1


def custom_domain_op(model):
    model.graph.node[2].op_type, model.graph.node[2].domain = "FancyRelu", "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def cycle(model):
    # relu reads its own downstream output: h2 <- Add(h, b1) becomes Add(y_loop, b1) with relu producing y_loop
    model.graph.node[1].input[0] = "h4"
    model.graph.node[2].output.append("h4")


def dangling_input(model):
    model.graph.node[1].input[1] = "bias_that_does_not_exist"


def duplicate_output(model):
    model.graph.node[2].output[0] = "h2"


def short_initializer(model):
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-8]


def non_utf8_name() -> bytes:
    return mlp_model().SerializeToString().replace(b"relu", b"r\xffl\xfe")


def not_a_model() -> bytes:
    return numpy_helper.from_array(np.zeros(8, np.float32), "t").SerializeToString()


def no_outputs(model):
    del model.graph.output[:]


CATALOGUE = {
    "empty file": (lambda: b"", "empty"),
    "truncated protobuf": (lambda: (SAMPLES / "digits_cnn.onnx").read_bytes()[:5000], "not a readable ONNX model"),
    "random bytes": (lambda: np.random.default_rng(7).bytes(3000), "ONNX model"),
    "protobuf that is not a model": (not_a_model, "ONNX model"),
    "no graph outputs": (with_graph_edit(no_outputs), "no outputs"),
    "opset newer than onnx": (with_graph_edit(newer_opset), "newer than"),
    "unknown custom-domain op": (with_graph_edit(custom_domain_op), "custom domain 'com.example'"),
    "cycle": (with_graph_edit(cycle), "cycle"),
    "dangling input": (with_graph_edit(dangling_input), "'bias_that_does_not_exist', which nothing produces"),
    "duplicate output name": (with_graph_edit(duplicate_output), "produced twice"),
    "initializer size mismatch": (with_graph_edit(short_initializer), "initializer 'W1'"),
    "non-UTF-8 name": (non_utf8_name, "not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(CATALOGUE))
def test_malformed_model_exits_2_naming_the_file(runner, tmp_path: Path, fast_recipe, case):
    build, expected = CATALOGUE[case]
    model = tmp_path / "model.onnx"
    model.write_bytes(build())
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["compress", str(model), "-r", str(fast_recipe(DYNAMIC_PASS)), "-o", str(out / "m.onnx")]
    )
    assert result.exit_code == 2, result.output
    assert str(model) in result.stderr and expected in result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()


def test_model_onnxruntime_refuses_is_bad_input_not_a_crash(runner, tmp_path: Path, fast_recipe):
    """Structurally fine, but the types do not add up: ONNX Runtime's refusal is reported as the input's fault."""
    model = make_model(
        [helper.make_node("Add", ["x", "c"], ["y"], name="add")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.ones(4, np.int64), "c")],
    )
    path = tmp_path / "typed.onnx"
    onnx.save_model(model, str(path))
    result = runner.invoke(
        app, ["compress", str(path), "-r", str(fast_recipe(DYNAMIC_PASS)), "-o", str(tmp_path / "out" / "m.onnx")]
    )
    assert result.exit_code == 2, result.output
    assert "ONNX Runtime cannot run this model on optc's synthetic inputs" in result.stderr
    assert not (tmp_path / "out").exists()


def one_node_compress_args(tmp_path: Path, fast_recipe, node, x_shape, y_shape, weight) -> list[str]:
    """``optc compress`` arguments for a saved model of ``node`` (x -> y, one constant) without data."""
    model = make_model(
        [node],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [weight],
    )
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    return ["compress", str(path), "-r", str(fast_recipe(DYNAMIC_PASS)), "-o", str(tmp_path / "out" / "m.onnx")]


def test_a_model_that_fails_on_synthetic_inputs_is_told_what_they_were_and_how_to_give_its_own(
    runner, tmp_path: Path, fast_recipe
):
    """Silero VAD (an STFT with reflect padding, a scalar sample rate): optc's synthetic input of 32 samples was too
    short for its padding and "ONNX Runtime cannot run this model" blamed the model; the hint now names the inputs
    optc made and the options that give the model its own."""
    pads = numpy_helper.from_array(np.array([0, 40, 0, 40], np.int64), "pads")
    pad = helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect", name="pad")
    args = one_node_compress_args(tmp_path, fast_recipe, pad, [1, ""], [1, ""], pads)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "cannot run this model on optc's synthetic inputs" in result.stderr
    assert "x float32[1, 32]" in result.stderr and "--input-shape" in result.stderr and "--data" in result.stderr
    sized = runner.invoke(app, [*args, "--input-shape", "x=1x64"])
    assert "cannot run this model" not in sized.stderr  # it runs; the pass then finds nothing to quantize


def test_an_image_model_of_open_size_needs_data_or_its_size(runner, tmp_path: Path, fast_recipe):
    """PP-OCRv4's text recognizer ([N, 3, ?, W]) passed dynamic int8's search on 32x32 noise at cosine 0.998, every
    line read as blank, and came out at 0.978 on real 48x320 lines with exit 0: optc no longer guesses image sizes,
    in compress, compare or bench."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv")
    args = one_node_compress_args(tmp_path, fast_recipe, conv, ["n", 3, "h", "w"], ["n", 4, None, None], weight)
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2, refused.output
    assert "'x'" in refused.stderr and "size is open (h, w)" in refused.stderr
    assert "--input-shape x=1x3xNxN" in refused.stderr and not (tmp_path / "out").exists()
    sized = runner.invoke(app, [*args, "--input-shape", "x=1x3x16x16"])
    assert sized.exit_code == 0, sized.output
    for measured in (["compare", args[1], args[1]], ["bench", args[1]]):  # what they would time or compare too
        result = runner.invoke(app, measured)
        assert result.exit_code == 2 and "size is open (h, w)" in result.stderr, result.output


@pytest.mark.parametrize(
    ("passes_yaml", "expected"),
    [
        ("  - {type: prune, method: magnitude, sparsity: 1.5}\n", "passes[0].sparsity"),
        (
            "  - {type: quantize, mode: static, calibration: {method: percentile, percentile: 120}}\n",
            "passes[0].calibration.percentile",
        ),
        ("  - {type: sharpen}\n", "unknown pass type 'sharpen'"),
        ("  - {type: quantize, mode: dynamic, calibration: {method: minmax}}\n", "passes[0]"),
    ],
)
def test_out_of_range_recipe_values_exit_2_naming_the_field(runner, tmp_path: Path, fast_recipe, passes_yaml, expected):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["compress", str(SAMPLES / "digits_cnn.onnx"), "-r", str(fast_recipe(passes_yaml)), "-o", str(out / "m.onnx")],
    )
    assert result.exit_code == 2, result.output
    assert "recipe.yaml" in result.stderr and expected in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"pixels": np.zeros((4, 1, 8, 8), np.float32)}, "'pixels' match no model input"),
        ({"input": np.zeros((4, 1, 9, 9), np.float32)}, "does not fit the model input shape"),
        ({"input": np.zeros((4, 1, 8, 8), np.int32)}, "dtype int32"),
    ],
)
def test_bad_calibration_data_exits_2_naming_the_file(runner, tmp_path: Path, fast_recipe, arrays, expected):
    calibration = tmp_path / "calib.npz"
    np.savez(calibration, **arrays)
    out = tmp_path / "out"
    recipe = fast_recipe("  - {type: quantize, mode: static}\n")
    result = runner.invoke(
        app,
        [
            "compress",
            str(SAMPLES / "digits_cnn.onnx"),
            "-r",
            str(recipe),
            "-o",
            str(out / "m.onnx"),
            "--calibration-data",
            str(calibration),
        ],
    )
    assert result.exit_code == 2, result.output
    assert str(calibration) in result.stderr and expected in result.stderr
    assert not out.exists()
