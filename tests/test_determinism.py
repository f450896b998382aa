"""Same model, recipe, data and seed -> byte-identical output, for every built-in recipe; and concurrent runs never
mix their writes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from optc.compress import CompressRequest, compress
from optc.progress import SilentProgress
from optc.recipe import LatencySettings, builtin_recipe_names, load_recipe
from tests.conftest import DYNAMIC_PASS, ROOT, SAMPLES


def sample_for(recipe: str) -> tuple[Path, Path, Path]:
    """(model, evaluation data, calibration data) a built-in recipe is meant for."""
    if "bert" in recipe:
        return SAMPLES / "tiny_bert.onnx", SAMPLES / "tiny_bert_data.npz", SAMPLES / "tiny_bert_calib.npz"
    return SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_test.npz", SAMPLES / "digits_calib.npz"


def compress_once(recipe_name: str, out: Path) -> str:
    model, data, calibration = sample_for(recipe_name)
    loaded = load_recipe(recipe_name)
    loaded.recipe.evaluate.latency = LatencySettings(warmup=0, runs=1, min_time_s=0)
    request = CompressRequest(
        model_path=model,
        output_path=out,
        recipe=loaded,
        data_path=data,
        calibration_data=calibration,
        on_gate_failure="write",  # determinism holds for models a gate rejects too
    )
    compress(request, SilentProgress())
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize("recipe", builtin_recipe_names())
def test_every_builtin_recipe_is_byte_for_byte_reproducible(tmp_path: Path, recipe: str):
    first = compress_once(recipe, tmp_path / "a" / "model.onnx")
    second = compress_once(recipe, tmp_path / "b" / "model.onnx")
    assert first == second
    model = onnx.load_model(str(tmp_path / "a" / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["optc.recipe_sha256"] and props["optc.input_sha256"]
    assert str(tmp_path) not in model.SerializeToString().decode("latin-1")  # no absolute paths inside


def optc_process(out: Path, recipe: Path, report: Path) -> subprocess.Popen:
    args = [
        "compress",
        str(SAMPLES / "digits_cnn.onnx"),
        "-r",
        str(recipe),
        "-o",
        str(out),
        "--report",
        str(report),
        "--quiet",
    ]
    return subprocess.Popen([sys.executable, "-m", "optc", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True)


def test_concurrent_runs_do_not_interfere(tmp_path: Path, fast_recipe):
    recipe = fast_recipe(DYNAMIC_PASS)
    same = tmp_path / "same" / "model.onnx"
    runs = [
        optc_process(tmp_path / "a" / "model.onnx", recipe, tmp_path / "a" / "report.json"),
        optc_process(tmp_path / "b" / "model.onnx", recipe, tmp_path / "b" / "report.json"),
        optc_process(same, recipe, tmp_path / "same" / "report1.json"),
        optc_process(same, recipe, tmp_path / "same" / "report2.json"),
    ]
    for process in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    digests = {
        hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx", same)
    }
    assert len(digests) == 1  # one complete, identical model everywhere, never a mix
    onnx.checker.check_model(onnx.load_model(str(same)))
    left = {p.name for p in same.parent.iterdir()}
    assert {"model.onnx", "report1.json", "report2.json"} <= left
    assert not [name for name in left if name.startswith(".optc-tmp-")]  # no temporary files left behind
