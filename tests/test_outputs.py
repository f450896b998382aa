"""The pipeline contract for paths: every output checked before any work, nothing overwritten, nothing half done,
a failed gate never leaving a built-looking target."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import optc.compress
from optc import outputs
from optc.cli.app import app
from tests.conftest import DYNAMIC_PASS, mlp_model, report_of, write_fast_recipe


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its digest (links by their target)."""
    return {
        str(p.relative_to(folder)): (f"-> {os.readlink(p)}" if p.is_symlink() else digest(p) if p.is_file() else "dir")
        for p in sorted(folder.rglob("*"))
    }


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch):
    """A folder with a model (weights in external data), data, and a recipe; passes must never start when a run is
    refused, so running one fails the test."""
    model = tmp_path / "e" / "model.onnx"
    model.parent.mkdir()
    onnx.save_model(mlp_model(), str(model), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32))
    write_fast_recipe(tmp_path, DYNAMIC_PASS)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file.txt").write_text("a file")
    return tmp_path


def refuse_work(monkeypatch) -> None:
    def no_work(*args, **kwargs):
        raise AssertionError("a pass started although the run should have been refused")

    monkeypatch.setattr(optc.compress, "run_passes", no_work)


def run(runner, workspace: Path, *args: str):
    base = ["compress", str(workspace / "e" / "model.onnx"), "-r", str(workspace / "recipe.yaml")]
    return runner.invoke(app, [*base, "--data", str(workspace / "eval.npz"), *args])


REFUSALS = {
    "report is the model": (["-o", "o/m.onnx", "--report", "o/m.onnx"], "same file"),
    "model is the markdown report": (["-o", "o/r.md", "--report", "o/r.json"], "same file"),
    "the input's external data": (["-o", "e/model.onnx.data"], "external data"),
    "the input model": (["-o", "e/model.onnx"], "the input model"),
    "the evaluation data": (["-o", "eval.npz"], "--data"),
    "the recipe as report": (["-o", "o/m.onnx", "--report", "recipe.yaml"], "the recipe"),
    "a device": (["-o", "/dev/null"], "not a regular file"),
    "under a regular file": (["-o", "file.txt/m.onnx"], "not a directory"),
    "an existing directory": (["-o", "dir"], "is a directory"),
    "a report that is a directory": (["-o", "o/m.onnx", "--report", "dir"], "is a directory"),
    "a name too long": (["-o", "o/" + "m" * 300 + ".onnx"], "longer than"),
    "an empty name": (["-o", ""], "not a file name"),
}


@pytest.mark.parametrize(("args", "message"), list(REFUSALS.values()), ids=list(REFUSALS))
def test_bad_output_paths_are_refused_before_any_work(runner, workspace, monkeypatch, args, message):
    refuse_work(monkeypatch)
    monkeypatch.chdir(workspace)
    before = listing(workspace)
    result = run(runner, workspace, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr
    assert listing(workspace) == before  # nothing written, no input touched


def test_links_to_inputs_are_refused_and_left_alone(runner, workspace, monkeypatch):
    refuse_work(monkeypatch)
    model = workspace / "e" / "model.onnx"
    (workspace / "soft.onnx").symlink_to(model)
    os.link(workspace / "eval.npz", workspace / "hard.onnx")
    before = listing(workspace)
    soft = run(runner, workspace, "-o", str(workspace / "soft.onnx"))
    assert soft.exit_code == 2 and "symbolic link" in soft.stderr
    hard = run(runner, workspace, "-o", str(workspace / "hard.onnx"))
    assert hard.exit_code == 2 and "--data" in hard.stderr  # the same inode as the evaluation data
    assert listing(workspace) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the check cannot be observed")
def test_read_only_folder_is_refused_before_any_work(runner, workspace, monkeypatch):
    refuse_work(monkeypatch)
    locked = workspace / "locked"
    locked.mkdir(mode=0o500)
    result = run(runner, workspace, "-o", str(locked / "m.onnx"))
    assert result.exit_code == 2 and "cannot write" in result.stderr


def test_reports_are_named_after_the_model_so_two_targets_share_a_folder(runner, workspace):
    build = workspace / "build"
    for name in ("a.int8.onnx", "b.int8.onnx"):
        assert run(runner, workspace, "-o", str(build / name)).exit_code == 0
    names = sorted(p.name for p in build.iterdir())
    assert names == [
        "a.int8.onnx",
        "a.int8.report.html",
        "a.int8.report.json",
        "a.int8.report.md",
        "b.int8.onnx",
        "b.int8.report.html",
        "b.int8.report.json",
        "b.int8.report.md",
    ]
    report = json.loads((build / "b.int8.report.json").read_text())
    assert report["optimized"]["path"] == str(build / "b.int8.onnx")
    assert report["optimized"]["sha256"] == digest(build / "b.int8.onnx")


def test_a_failed_gate_leaves_the_destination_as_it_was_and_writes_rejected_files(runner, workspace):
    out = workspace / "build" / "m.onnx"
    out.parent.mkdir()
    out.write_bytes(b"the previous model")
    result = run(runner, workspace, "-o", str(out), "--min-speedup", "1000")
    assert result.exit_code == 1
    assert out.read_bytes() == b"the previous model" and not report_of(out).exists()
    rejected = workspace / "build" / "m.rejected.onnx"
    assert onnx.load_model(str(rejected)).graph.node
    report = json.loads((workspace / "build" / "m.rejected.report.json").read_text())
    assert not report["gates_passed"] and report["optimized"]["sha256"] == digest(rejected)
    assert "m.rejected.onnx" in result.stderr and "was not touched" in result.stderr


@pytest.mark.parametrize(("policy", "written"), [("write", ["m.onnx", "m.report.json"]), ("discard", [])])
def test_gate_failure_policy_can_write_the_destination_or_nothing(runner, workspace, policy, written):
    out = workspace / "build" / "m.onnx"
    result = run(runner, workspace, "-o", str(out), "--min-speedup", "1000", "--on-gate-failure", policy)
    assert result.exit_code == 1
    present = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
    assert [name for name in present if name.endswith((".onnx", ".json"))] == written


def test_a_full_disk_while_writing_reports_publishes_nothing(runner, workspace, monkeypatch):
    out = workspace / "build" / "m.onnx"
    out.parent.mkdir()
    out.write_bytes(b"the previous model")
    report_of(out).write_text("the previous report")
    real_write = optc.compress.write_file

    def disk_full_at_html(path, payload):
        if str(path).endswith(".html"):
            raise OSError(28, "No space left on device", str(path))
        real_write(path, payload)

    monkeypatch.setattr(optc.compress, "write_file", disk_full_at_html)
    result = run(runner, workspace, "-o", str(out))
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.stderr and "nothing was written" in result.stderr
    assert out.read_bytes() == b"the previous model" and report_of(out).read_text() == "the previous report"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.report.json"]


def test_an_interrupt_during_the_final_renames_is_held_and_reported_truthfully(runner, workspace, monkeypatch):
    out = workspace / "build" / "m.onnx"
    real_replace = os.replace
    signalled = []

    def replace_then_interrupt(source, destination):
        real_replace(source, destination)
        if not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # lands between the model's rename and the reports'

    monkeypatch.setattr(outputs.os, "replace", replace_then_interrupt)
    result = run(runner, workspace, "-o", str(out))
    assert result.exit_code == 130
    assert "interrupted after the outputs were written" in result.stderr
    report = json.loads(report_of(out).read_text())  # every output was published, consistently
    assert report["optimized"]["sha256"] == digest(out)
    assert report_of(out, ".html").exists()


# ----------------------------------------------------------------------------------------------------------- fuzz

CANDIDATES = {
    "fresh model path": "build/a.onnx",
    "second fresh path": "build/b.json",
    "the input model": "e/model.onnx",
    "its external data": "e/model.onnx.data",
    "the evaluation data": "eval.npz",
    "the recipe": "recipe.yaml",
    "a directory": "dir",
    "a symlink to the model": "soft.onnx",
    "a hard link to the data": "hard.npz",
}


@settings(
    max_examples=int(os.environ.get("OPTC_FUZZ_EXAMPLES", "25")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(output=st.sampled_from(sorted(CANDIDATES)), report=st.none() | st.sampled_from(sorted(CANDIDATES)))
def test_fuzz_any_output_and_report_path_never_overwrites_an_input(runner, tmp_path_factory, output, report):
    folder = tmp_path_factory.mktemp("fuzz")
    model = folder / "e" / "model.onnx"
    model.parent.mkdir()
    onnx.save_model(mlp_model(), str(model), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    np.savez(folder / "eval.npz", x=np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    write_fast_recipe(folder, DYNAMIC_PASS)
    (folder / "dir").mkdir()
    (folder / "soft.onnx").symlink_to(model)
    os.link(folder / "eval.npz", folder / "hard.npz")
    inputs = {p: digest(folder / p) for p in ("e/model.onnx", "e/model.onnx.data", "eval.npz", "recipe.yaml")}
    before = listing(folder)
    args = ["-o", str(folder / CANDIDATES[output])]
    if report is not None:
        args += ["--report", str(folder / CANDIDATES[report])]
    result = run(runner, folder, *args)
    assert result.exit_code in (0, 2), result.output
    assert {p: digest(folder / p) for p in inputs} == inputs
    fresh = output.startswith(("fresh", "second")) and (report is None or report.startswith(("fresh", "second")))
    distinct = report is None or CANDIDATES[report] != CANDIDATES[output]
    assert (result.exit_code == 0) == (fresh and distinct), result.output
    if result.exit_code == 2:
        assert listing(folder) == before and "Traceback" not in result.stderr
    else:
        assert onnx.load_model(str(folder / CANDIDATES[output]), format="protobuf").graph.node
