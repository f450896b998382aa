"""End to end through the real CLI: Typer's CliRunner for most cases, and real subprocesses for the exit codes and
--json stdout a pipeline sees."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from optc.cli import app
from optc.passes import registry
from optc.passes.registry import PassOutcome
from tests.conftest import CNN, CNN_TEST, DYNAMIC_PASS, ROOT, SAMPLES, relu_model, report_of


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compress(runner, *args):
    return runner.invoke(app, ["compress", *map(str, args)])


def test_builtin_int8_dynamic_on_the_sample_cnn(runner, tmp_path: Path):
    before = sha(CNN)
    out = tmp_path / "build" / "cnn.int8.onnx"
    result = compress(runner, CNN, "--recipe", "int8-dynamic", "--data", CNN_TEST, "-o", out)
    assert result.exit_code == 0, result.output
    assert sha(CNN) == before  # the input is never modified
    assert out.stat().st_size < CNN.stat().st_size * 0.3  # Conv weights stored in int8 too
    report = json.loads(report_of(out).read_text())
    assert report["schema_version"] == 1
    assert report["optimized"]["size_bytes"] == out.stat().st_size
    cpu = report["measurements"][0]
    assert cpu["provider"] == "cpu" and cpu["measured"]
    assert cpu["original"]["runs"] >= 50 and cpu["optimized"]["p50_ms"] > 0 and cpu["threads"] == 1
    assert cpu["accuracy"]["metric"] == "top1" and cpu["accuracy"]["samples"] == 360
    assert cpu["accuracy"]["original"] > 95 and abs(cpu["accuracy"]["drop"]) < 1.0
    assert [p["type"] for p in report["passes"]] == ["fuse", "quantize"]  # the recipe folds BatchNorm first
    assert report["passes"][1]["details"]["ops_quantized"] == 5
    assert report["passes"][1]["details"]["weights_stored_int8"] == 3
    assert "# optc report" in report_of(out, ".md").read_text()
    assert "\x1b[" not in result.output  # no colour when stdout is not a terminal
    props = {p.key: p.value for p in onnx.load_model(str(out)).metadata_props}
    assert props["optc.input_sha256"] == before


def test_json_output_is_one_document_on_stdout(runner, tmp_path: Path, fast_recipe):
    recipe = fast_recipe(DYNAMIC_PASS)
    out = tmp_path / "m.onnx"
    result = compress(
        runner, CNN, "-r", recipe, "-o", out, "--data", CNN_TEST, "--json", "--report", tmp_path / "r" / "cnn.json"
    )
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["exit_code"] == 0 and payload["written"]["report json"].endswith("cnn.json")
    assert (tmp_path / "r" / "cnn.md").exists()
    assert payload["report"]["measurements"][0]["accuracy"]["metric"] == "top1"


def test_failing_gate_exits_1_with_the_model_and_report_under_rejected_names(runner, tmp_path: Path, fast_recipe):
    recipe = fast_recipe(DYNAMIC_PASS, extra="gates: {max_size_ratio: 0.1}\n")
    out = tmp_path / "m.onnx"
    result = compress(runner, CNN, "-r", recipe, "-o", out, "--data", CNN_TEST, "--min-speedup", "1000")
    assert result.exit_code == 1
    assert not out.exists() and not report_of(out).exists()  # make must not see the target as built
    assert (tmp_path / "m.rejected.onnx").exists()
    report = json.loads((tmp_path / "m.rejected.report.json").read_text())
    assert not report["gates_passed"]
    failed = {g["name"] for g in report["gates"] if not g["passed"]}
    assert failed == {"max_size_ratio", "min_speedup[cpu]"}
    assert "gate failed" in result.stderr and "max_size_ratio" in result.stderr


def test_synthetic_data_is_said_out_loud(runner, tmp_path: Path, fast_recipe):
    result = compress(runner, CNN, "-r", fast_recipe(DYNAMIC_PASS), "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    report = json.loads(report_of(tmp_path / "m.onnx").read_text())
    assert report["data"] == "synthetic"
    assert report["measurements"][0]["accuracy"]["metric"] == "top1_agreement"
    assert any("synthetic" in w for w in report["warnings"])
    assert "synthetic" in result.stderr


def test_cuda_without_a_gpu_is_not_measured_and_never_shows_cpu_figures(
    runner, tmp_path: Path, fast_recipe, monkeypatch
):
    from optc.measure import providers

    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    result = compress(
        runner, CNN, "-r", fast_recipe(DYNAMIC_PASS), "-o", tmp_path / "m.onnx", "--providers", "cpu,cuda"
    )
    assert result.exit_code == 0, result.output
    cuda = json.loads(report_of(tmp_path / "m.onnx").read_text())["measurements"][1]
    assert cuda["provider"] == "cuda" and not cuda["measured"]
    assert cuda["original"] is None and cuda["speedup"] is None and cuda["accuracy"] is None
    assert "cuda: not measured" in report_of(tmp_path / "m.onnx", ".md").read_text()


def nothing_written(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t, r: [t / "missing.onnx", "-r", r, "-o", t / "out" / "m.onnx"], "no such file"),
        (lambda t, r: [CNN, "-r", t / "missing.yaml", "-o", t / "out" / "m.onnx"], "no such recipe file"),
        (lambda t, r: [CNN, "-r", r, "-o", CNN], "never overwrites"),
        (lambda t, r: [CNN, "-r", r, "-o", t / "out" / "m.onnx", "--data", t / "none.npz"], "none.npz"),
        (lambda t, r: [CNN, "-r", r, "-o", t / "out" / "m.onnx", "--providers", "tpu"], "--providers"),
        (
            lambda t, r: [CNN, "-r", r, "-o", t / "out" / "m.onnx", "--data", SAMPLES / "tiny_bert_data.npz"],
            "input_ids",
        ),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(runner, tmp_path: Path, fast_recipe, make_args, message):
    before = sha(CNN)
    result = compress(runner, *make_args(tmp_path, fast_recipe(DYNAMIC_PASS)))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert nothing_written(tmp_path / "out")
    assert sha(CNN) == before


def test_bad_recipe_exits_2_naming_the_field(runner, tmp_path: Path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n    per_channel: maybe\n")
    result = compress(runner, CNN, "-r", recipe, "-o", tmp_path / "out" / "m.onnx")
    assert result.exit_code == 2
    assert "bad.yaml" in result.stderr and "passes[0].per_channel" in result.stderr
    assert nothing_written(tmp_path / "out")


def test_corrupt_model_exits_2(runner, tmp_path: Path, fast_recipe):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(CNN.read_bytes()[:1000])
    result = compress(runner, broken, "-r", fast_recipe(DYNAMIC_PASS), "-o", tmp_path / "out" / "m.onnx")
    assert result.exit_code == 2
    assert "broken.onnx" in result.stderr and "not a readable ONNX model" in result.stderr


def test_dynamic_int8_with_nothing_to_quantize_says_so(runner, tmp_path: Path, fast_recipe):
    model = tmp_path / "relu.onnx"
    onnx.save_model(relu_model(), str(model))
    result = compress(runner, model, "-r", fast_recipe(DYNAMIC_PASS), "-o", tmp_path / "out" / "m.onnx")
    assert result.exit_code == 2
    assert "no MatMul/Gather/LSTM/GRU/RNN or Conv node with constant weights" in result.stderr
    assert "nothing to quantize" in result.stderr and "check op_types" not in result.stderr
    assert nothing_written(tmp_path / "out")


def test_pass_whose_result_does_not_load_exits_3_naming_it(runner, tmp_path: Path, fast_recipe, monkeypatch):
    def broken_pass(model, config, context):
        broken = onnx.ModelProto()
        broken.CopyFrom(model)
        del broken.graph.initializer[:]  # every weight gone: the graph references tensors that do not exist
        return PassOutcome(model=broken)

    entry = registry.lookup("quantize")
    monkeypatch.setitem(
        registry._REGISTRY, "quantize", registry.RegisteredPass("quantize", entry.config_cls, broken_pass)
    )
    result = compress(runner, CNN, "-r", fast_recipe(DYNAMIC_PASS), "-o", tmp_path / "out" / "m.onnx")
    assert result.exit_code == 3
    assert "passes[0] quantize (dynamic)" in result.stderr
    assert nothing_written(tmp_path / "out")


def test_internal_error_exits_4_without_a_traceback(runner, tmp_path: Path, fast_recipe, monkeypatch):
    def explode(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr("optc.compress.evaluate_gates", explode)
    result = compress(runner, CNN, "-r", fast_recipe(DYNAMIC_PASS), "-o", tmp_path / "out" / "m.onnx")
    assert result.exit_code == 4
    assert "internal error: ZeroDivisionError: boom" in result.stderr
    assert "Traceback" not in result.output
    assert nothing_written(tmp_path / "out")


def test_inspect_reports_the_model(runner):
    result = runner.invoke(app, ["inspect", str(CNN), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["opsets"] == {"ai.onnx": 17} and summary["ir_version"] == 8
    assert summary["inputs"][0] == {"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8]}
    assert summary["op_types"]["BatchNormalization"] == 3
    assert summary["parameters"] > 80_000 and summary["quantized"] is False
    assert summary["weight_sparsity"] == 0.0
    table = runner.invoke(app, ["inspect", str(CNN), "--nodes"])
    assert "[batch, 1, 8, 8]" in table.stdout and "bn1 (BatchNormalization)" in table.stdout


def test_recipes_commands(runner, tmp_path: Path):
    listing = json.loads(runner.invoke(app, ["recipes", "list", "--json"]).stdout)
    assert "int8-dynamic" in [r["name"] for r in listing]
    shown = runner.invoke(app, ["recipes", "show", "int8-dynamic"])
    copy = tmp_path / "copy.yaml"
    copy.write_text(shown.stdout)
    assert runner.invoke(app, ["recipes", "validate", str(copy)]).exit_code == 0
    copy.write_text(shown.stdout.replace("op_types", "op_typez"))
    invalid = runner.invoke(app, ["recipes", "validate", str(copy)])
    assert invalid.exit_code == 2 and "op_typez" in invalid.stderr
    schema = json.loads(runner.invoke(app, ["recipes", "schema"]).stdout)
    assert schema["title"] == "optc recipe"
    assert runner.invoke(app, ["recipes", "show", "nope"]).exit_code == 2


def test_version_and_help(runner):
    assert runner.invoke(app, ["--version"]).stdout.startswith("optc ")
    for command in (["compress"], ["inspect"], ["recipes", "list"], ["recipes", "schema"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Example" in result.stdout


def run_optc(*args, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "optc", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_real_process_exit_codes_and_json(tmp_path: Path, fast_recipe):
    recipe = fast_recipe(DYNAMIC_PASS)
    ok = run_optc("compress", CNN, "-r", recipe, "-o", tmp_path / "a.onnx", "--data", CNN_TEST, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["report"]["measurements"][0]["accuracy"]["metric"] == "top1"
    gate = run_optc("compress", CNN, "-r", recipe, "-o", tmp_path / "b.onnx", "--max-size-ratio", "0.01", "--quiet")
    assert gate.returncode == 1 and gate.stdout == ""
    bad = run_optc("compress", tmp_path / "nope.onnx", "-r", recipe, "-o", tmp_path / "c.onnx", "--json")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert json.loads(bad.stdout)["exit_code"] == 2
    usage = run_optc("compress", CNN)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
