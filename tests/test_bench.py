"""optc bench: interleaved latency of several models, ratios within a stated noise bound, memory, CUDA honesty."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from optc.cli import app
from optc.measure import environment, inference_call, memory, providers
from optc.measure.noise import SESSION_FLOOR, p50_ratio
from optc.measure.profile import aggregate, compare_profiles, profile_op_types
from tests.conftest import CNN, CNN_TEST, make_model, mlp_model

FAST = ["--warmup", "1", "--runs", "3", "--min-time", "0"]


def bench_json(runner, *args):
    result = runner.invoke(app, ["bench", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_of_a_model_against_itself_stays_within_its_noise_bound(runner):
    report = bench_json(
        runner,
        CNN,
        CNN,
        "--batch-sizes",
        "1,32",
        "--data",
        CNN_TEST,
        "--warmup",
        "2",
        "--runs",
        "40",
        "--min-time",
        "0.5",  # thousands of rounds at batch 1: one scheduler hiccup cannot sway the median on a shared runner
    )
    assert [(c["batch_size"], c["measured"]) for c in report["cases"]] == [(1, True), (32, True)]
    for case in report["cases"]:
        first, second = case["results"]
        assert first["ratio_to_first"] is None
        ratio = second["ratio_to_first"]
        assert ratio["noise_bound"] >= SESSION_FLOOR
        assert ratio["ci95"][0] <= ratio["value"] <= ratio["ci95"][1]
        assert abs(ratio["value"] - 1.0) <= ratio["noise_bound"] and not ratio["significant"]
        for result in case["results"]:
            stats = result["latency"]
            assert stats["runs"] >= 40 and 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
            assert {"mean_ms", "stdev_ms", "cv"} <= set(stats)
            assert result["throughput_per_s"] == pytest.approx(case["batch_size"] * 1e3 / stats["mean_ms"])
    assert report["settings"]["confidence"] == 0.95 and report["data"].endswith("digits_test.npz")
    assert report["environment"]["providers_available"]


def test_bench_table_names_every_case(runner):
    result = runner.invoke(app, ["bench", str(CNN), "--batch-sizes", "1,4", *FAST])
    assert result.exit_code == 0, result.output
    assert "cpu, batch 1, 1 thread(s)" in result.stdout and "cpu, batch 4, 1 thread(s)" in result.stdout


def test_noisy_runs_are_warned_about(runner):
    result = runner.invoke(app, ["bench", str(CNN), *FAST, "--max-cv", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["noisy"] and report["cases"][0]["results"][0]["noisy"]
    assert any("scatter" in w for w in report["warnings"]) and "scatter" in result.stderr


def test_fixed_batch_model_is_not_measured_at_other_batch_sizes(runner, tmp_path):
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    path = tmp_path / "fixed.onnx"
    onnx.save_model(model, str(path))
    report = bench_json(runner, path, "--batch-sizes", "2,8", *FAST)
    measured = {c["batch_size"]: c for c in report["cases"]}
    assert measured[2]["measured"] and not measured[8]["measured"]
    assert "fixed at 2" in measured[8]["reason"]


def test_cuda_missing_is_not_measured_with_the_reason(runner, monkeypatch):
    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    report = bench_json(runner, CNN, "--providers", "cpu,cuda", *FAST)
    cuda = [c for c in report["cases"] if c["provider"] == "cuda"][0]
    assert not cuda["measured"] and "onnxruntime-gpu" in cuda["reason"] and cuda["results"] == []
    assert report["environment"]["gpu"] is None


def test_models_with_different_inputs_are_refused(runner, tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save_model(mlp_model(), str(path))
    result = runner.invoke(app, ["bench", str(CNN), str(path), *FAST])
    assert result.exit_code == 2 and "differ" in result.stderr


@pytest.mark.parametrize("option", ["--batch-sizes", "--threads"])
def test_bad_number_lists_exit_2(runner, option):
    result = runner.invoke(app, ["bench", str(CNN), option, "1,x"])
    assert result.exit_code == 2 and option in result.stderr


def test_ratio_bound_separates_real_differences_from_noise():
    rng = np.random.default_rng(0)
    base = list(1e-3 * (1 + 0.05 * rng.random(60)))
    same = p50_ratio(base, list(np.array(base) * (1 + 0.01 * rng.standard_normal(60))))
    assert not same.significant and abs(same.value - 1) <= same.noise_bound
    slower = p50_ratio(base, [2 * t for t in base])
    assert slower.significant and slower.value == pytest.approx(2.0)


def test_peak_memory_sees_an_allocation():
    if memory._reset_high_water_mark() is None:
        pytest.skip("this system cannot reset the resident-memory high-water mark (/proc/self/clear_refs)")
    _, peak = memory.with_peak_memory(lambda: np.ones(8_000_000).sum())  # 64 MB
    assert peak is not None and peak > 50e6


def test_profile_aggregates_per_op_type(tmp_path):
    profile = profile_op_types(
        mlp_model().SerializeToString(), "cpu", 1, {"x": np.ones((4, 16), np.float32)}, tmp_path, "m"
    )
    assert profile.runs == 10 and profile.ops and sum(o.share for o in profile.ops) == pytest.approx(1.0)
    assert not list(tmp_path.iterdir())  # the profiler's file is removed
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0},
        {"cat": "Node", "name": "a_kernel_time", "ts": 1, "dur": 100, "args": {"op_name": "Conv"}},  # warm-up
        {"cat": "Session", "name": "model_run", "ts": 10},
        {"cat": "Node", "name": "a_kernel_time", "ts": 11, "dur": 30, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "b_fence_before", "ts": 12, "dur": 50, "args": {"op_name": "Cast"}},
        {"cat": "Node", "name": "b_kernel_time", "ts": 13, "dur": 10, "args": {"op_name": "Cast"}},
    ]
    after = aggregate(events, skip_runs=1)
    assert [(o.op_type, o.ms_per_run, o.share) for o in after.ops] == [("Conv", 0.03, 0.75), ("Cast", 0.01, 0.25)]
    before = aggregate(events[:4], skip_runs=1)
    change = {c.op_type: c for c in compare_profiles(before, after).ops}
    assert change["Cast"].before_share == 0 and change["Cast"].after_share == 0.25


class FakeBinding:
    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args[0] if args else None))


class FakeCudaSession:
    def __init__(self):
        self.binding = FakeBinding()
        self.runs = 0

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_inputs(self):
        return [type("Arg", (), {"name": "x"})()]

    def get_outputs(self):
        return [type("Arg", (), {"name": "y"})()]

    def io_binding(self):
        return self.binding

    def run_with_iobinding(self, binding):
        self.runs += 1


@pytest.mark.parametrize("include_copies", [False, True])
def test_cuda_calls_use_io_binding_and_synchronize(monkeypatch, include_copies):
    monkeypatch.setattr(
        inference_call.ort.OrtValue, "ortvalue_from_numpy", lambda array, device, index: ("gpu", device)
    )
    session = FakeCudaSession()
    call = inference_call.inference_call(session, {"x": np.zeros((1, 4), np.float32)}, include_copies)
    call()
    call()
    names = [name for name, _ in session.binding.calls]
    assert session.runs == 2 and names.count("synchronize_outputs") == 2
    if include_copies:
        assert "bind_cpu_input" in names and ("bind_output", "y") in session.binding.calls
    else:
        assert "bind_ortvalue_input" in names and "bind_cpu_input" not in names


def test_cpu_calls_are_plain_runs_fed_only_the_model_inputs():
    session = ort.InferenceSession(mlp_model().SerializeToString(), providers=["CPUExecutionProvider"])
    call = inference_call.inference_call(session, {"x": np.zeros((1, 16), np.float32), "labels": np.zeros(1)})
    call()  # ONNX Runtime would refuse the extra 'labels' feed


def test_gpu_environment_fails_soft(monkeypatch):
    monkeypatch.setattr(environment.onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(environment.shutil, "which", lambda name: None)
    monkeypatch.setattr(environment, "CUDNN_LIBRARIES", ("libcudnn-not-here.so",))
    gpu = environment.current_environment().gpu
    assert gpu is not None and gpu.name is None and gpu.cudnn_version is None


def test_gpu_name_comes_from_nvidia_smi(monkeypatch):
    monkeypatch.setattr(environment.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    done = type("Done", (), {"stdout": "NVIDIA H100 80GB HBM3, 550.54.15\n"})()
    monkeypatch.setattr(environment.subprocess, "run", lambda *a, **k: done)
    assert environment.gpu_info().name == "NVIDIA H100 80GB HBM3" and environment.gpu_info().driver == "550.54.15"


needs_cuda = pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="needs onnxruntime-gpu and an NVIDIA GPU"
)


@needs_cuda
def test_bench_on_cuda_measures_on_the_gpu(runner):
    report = bench_json(runner, CNN, CNN, "--providers", "cuda", "--batch-sizes", "1,32", *FAST)
    case = report["cases"][0]
    if not case["measured"]:
        pytest.skip(case["reason"])
    assert case["results"][1]["ratio_to_first"]["noise_bound"] > 0
    assert report["environment"]["gpu"] is not None
