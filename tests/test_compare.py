"""optc compare: per-output fidelity, accuracy of both, and per-tensor error worst first."""

import json

import onnx
import pytest

from optc.cli import app
from tests.conftest import CNN, CNN_TEST, DYNAMIC_PASS, mlp_model, write_fast_recipe


@pytest.fixture(scope="module")
def int8_cnn(tmp_path_factory):
    from typer.testing import CliRunner

    folder = tmp_path_factory.mktemp("int8")
    recipe = write_fast_recipe(folder, DYNAMIC_PASS)
    out = folder / "cnn.int8.onnx"
    result = CliRunner().invoke(app, ["compress", str(CNN), "-r", str(recipe), "-o", str(out), "--data", str(CNN_TEST)])
    assert result.exit_code == 0, result.output
    return out


def compare_json(runner, *args):
    result = runner.invoke(app, ["compare", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_compare_int8_lists_per_tensor_errors_worst_first(runner, int8_cnn):
    report = compare_json(runner, CNN, int8_cnn, "--data", CNN_TEST, "--per-tensor")
    accuracy = report["accuracy"]
    assert accuracy["metric"] == "top1" and accuracy["original"] > 95 and accuracy["optimized"] > 95
    logits = accuracy["outputs"][0]
    assert logits["top1_agreement"] > 95 and logits["top5_agreement"] >= logits["top1_agreement"]
    assert 10 < logits["sqnr_db"] < 100 and logits["cosine"] > 0.99
    tensors = report["per_tensor"]["tensors"]
    assert len(tensors) >= 5 and "logits" in [t["name"] for t in tensors]
    finite = [t["sqnr_db"] for t in tensors if t["sqnr_db"] is not None]
    assert finite == sorted(finite) and tensors[0]["sqnr_db"] == finite[0]
    assert any(t["original_op"] != t["optimized_op"] for t in tensors)  # a quantized op kept its output name


def test_compare_table(runner, int8_cnn):
    result = runner.invoke(app, ["compare", str(CNN), str(int8_cnn), "--data", str(CNN_TEST), "--per-tensor"])
    assert result.exit_code == 0, result.output
    assert "worst first" in result.stdout and "SQNR" in result.stdout and "top-1 accuracy" in result.stdout


def test_a_model_compared_with_itself_is_identical(runner):
    report = compare_json(runner, CNN, CNN, "--per-tensor", "--samples", "8")
    assert report["data"] == "synthetic" and any("synthetic" in w for w in report["warnings"])
    output = report["accuracy"]["outputs"][0]
    assert output["sqnr_db"] is None and output["max_abs_error"] == 0 and output["cosine"] == pytest.approx(1.0)
    assert all(t["sqnr_db"] is None and t["max_abs_error"] == 0 for t in report["per_tensor"]["tensors"])


def test_models_with_different_inputs_are_refused(runner, tmp_path):
    other = tmp_path / "mlp.onnx"
    onnx.save_model(mlp_model(), str(other))
    result = runner.invoke(app, ["compare", str(CNN), str(other)])
    assert result.exit_code == 2 and "mlp.onnx" in result.stderr and "Traceback" not in result.output


def test_unavailable_provider_is_bad_input(runner, monkeypatch):
    from optc.measure import providers

    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    result = runner.invoke(app, ["compare", str(CNN), str(CNN), "--providers", "cuda"])
    assert result.exit_code == 2 and "onnxruntime-gpu" in result.stderr
