"""Static int8 end to end through the CLI on the sample CNN: budget, refusal of quantized input, sensitivity table."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optc.cli.app import app
from tests.conftest import SAMPLES

CALIB = str(SAMPLES / "digits_calib.npz")
TEST = str(SAMPLES / "digits_test.npz")
# Percentile 80 clips activations: the fully quantized CNN loses about 3 points on AVX2-only and on VNNI CPUs alike
# (percentile 90 lost 0.3 on one and 0.6 on the other), so a budget of 1 point has work to do everywhere.
CLIPPED = "  - type: quantize\n    mode: static\n    calibration: {method: percentile, percentile: 80}\n"
BUDGET = 1.0


def top1(path: Path) -> float:
    data = np.load(TEST)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return 100 * float(np.mean(session.run(None, {"input": data["input"]})[0].argmax(1) == data["labels"]))


def compress(runner, tmp_path: Path, recipe: str, *extra: str):
    args = ["compress", str(SAMPLES / "digits_cnn.onnx"), "-r", recipe, "-o", str(tmp_path / "out.onnx"), "--json"]
    result = runner.invoke(app, [*args, "--calibration-data", CALIB, "--data", TEST, *extra])
    return result, json.loads(result.stdout)


def test_accuracy_budget_keeps_sensitive_nodes_in_float(runner, tmp_path: Path, fast_recipe):
    _, unbudgeted = compress(runner, tmp_path, str(fast_recipe(CLIPPED, name="clipped.yaml")))
    full_drop = unbudgeted["report"]["measurements"][0]["accuracy"]["drop"]
    assert full_drop > 2 * BUDGET  # the test needs a model the budget has work to do on
    result, payload = compress(runner, tmp_path, str(fast_recipe(CLIPPED + f"    accuracy_budget: {BUDGET}\n")))
    assert result.exit_code == 0, payload
    details = payload["report"]["passes"][0]["details"]
    kept = [row for row in details["kept_in_float"] if "accuracy_budget" in row["reason"]]
    assert kept and all(row["drop_db"] > 0 for row in kept)
    assert len(details["sensitivity"]) == 5 and sum(row["kept_in_float"] for row in details["sensitivity"]) == len(kept)
    assert len(details["fidelity_search"]) <= 6  # a handful of conversions, not one per node
    assert payload["report"]["measurements"][0]["accuracy"]["drop"] <= BUDGET
    assert top1(SAMPLES / "digits_cnn.onnx") - top1(tmp_path / "out.onnx") <= BUDGET + 1e-9


def test_builtin_int8_keeps_top1_on_the_sample_cnn(runner, tmp_path: Path):
    result, payload = compress(runner, tmp_path, "int8")
    assert result.exit_code == 0, payload
    assert payload["report"]["size_ratio"] < 0.3
    assert payload["report"]["measurements"][0]["accuracy"]["drop"] <= 0.5
    assert payload["report"]["warnings"] == []


@pytest.mark.parametrize("recipe", ["int8", "prune-auto"])
def test_requantizing_exits_2_with_a_clear_message_before_any_pass_runs(runner, tmp_path: Path, recipe: str):
    compress(runner, tmp_path, "int8")
    quantized = tmp_path / "out.onnx"
    result = runner.invoke(app, ["compress", str(quantized), "-r", recipe, "-o", str(tmp_path / "again.onnx")])
    assert result.exit_code == 2
    assert "already quantized" in result.output and "QuantizeLinear" in result.output
    assert "passes[0]" not in result.output.split("error:")[0]  # prune-auto's pruning did not run first
    assert not (tmp_path / "again.onnx").exists()


def test_inspect_sensitivity_lists_every_weighted_node(runner):
    args = ["inspect", str(SAMPLES / "digits_cnn.onnx"), "--sensitivity", "--calibration-data", CALIB, "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)["sensitivity"]
    assert {row["node"] for row in table} == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    drops = [row["drop_db"] for row in table]
    assert drops == sorted(drops, reverse=True) and drops[0] > 0
    assert onnx.load_model(str(SAMPLES / "digits_cnn.onnx"))  # the input is untouched
