"""Messages and terminal output: reasons kept, lists capped, control characters escaped, slowdowns called
slowdowns, tables that fit an 80-column log, and --help that says what each option takes."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import numpy as np
import pytest
from rich.console import Console

import optc.compress
from optc.cli.app import app
from optc.cli.render import bench_view, report_view
from optc.messages import exception_reason, printable, quoted_list
from optc.report.format import speed_change
from optc.report.markdown import render_markdown
from optc.report.schema import Report
from optc.report.svg import LatencyRow, latency_chart
from tests.conftest import CNN, CNN_TEST, DYNAMIC_PASS, report_of

ESC = "\x1b"


def rendered(renderable, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.export_text().splitlines()


def test_onnx_runtime_errors_keep_their_reason_without_the_status_prefix():
    long = RuntimeError(
        "[ONNXRuntimeError] : 1 : FAIL : Load model from /a/very/long/path failed:"
        + " context" * 400
        + " Type Error: the real reason is at the end"
    )
    text = exception_reason(long)
    assert not text.startswith("[ONNXRuntimeError]") and text.startswith("Load model from")
    assert text.endswith("the real reason is at the end") and len(text) < 1300


def test_long_lists_are_capped_with_a_count():
    assert quoted_list([f"a{i}" for i in range(20000)]).endswith("and 19,992 more")
    assert quoted_list(["x", "y"]) == "'x', 'y'"


def test_many_unknown_arrays_give_a_short_message(runner, tmp_path, fast_recipe):
    data = dict(np.load(CNN_TEST)) | {f"extra{i}": np.zeros(1) for i in range(300)}
    np.savez(tmp_path / "eval.npz", **data)
    recipe = fast_recipe(DYNAMIC_PASS)
    result = runner.invoke(
        app,
        ["compress", str(CNN), "-r", str(recipe), "-o", str(tmp_path / "o.onnx"), "--data", str(tmp_path / "eval.npz")],
    )
    assert result.exit_code == 2 and "and 292 more" in result.stderr and len(result.stderr) < 2000


def test_control_characters_in_names_are_escaped_in_the_terminal_and_the_reports(runner, tmp_path, fast_recipe):
    hostile = tmp_path / f"model{ESC}[31mred{ESC}[0m.onnx"
    shutil.copy(CNN, hostile)
    out = tmp_path / f"out{ESC}]0;title\a.onnx"
    args = ["compress", str(hostile), "-r", str(fast_recipe(DYNAMIC_PASS)), "-o", str(out), "--data", str(CNN_TEST)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert ESC not in result.output and "\a" not in result.output and "\\x1b[31m" in result.output
    for suffix in (".md", ".html"):
        text = report_of(out, suffix).read_text()
        assert ESC not in text and "\\x1b" in text
    missing = runner.invoke(app, ["inspect", str(tmp_path / f"gone{ESC}[2J.onnx")])
    assert missing.exit_code == 2 and ESC not in missing.stderr and "\\x1b[2J" in missing.stderr
    assert printable("tab\tand\nnewline") == "tab\tand\nnewline"


def test_a_slowdown_is_called_a_slowdown():
    assert speed_change(2.0) == "2.00× faster"
    assert speed_change(0.9) == "1.11× slower"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Report:
    from typer.testing import CliRunner

    from tests.conftest import write_fast_recipe

    folder = tmp_path_factory.mktemp("msg")
    recipe = write_fast_recipe(folder, DYNAMIC_PASS)
    result = CliRunner().invoke(
        app, ["compress", str(CNN), "-r", str(recipe), "-o", str(folder / "m.onnx"), "--data", str(CNN_TEST), "--json"]
    )
    return Report.model_validate(json.loads(result.stdout)["report"])


def test_report_tables_fit_80_columns_and_put_a_missing_provider_on_its_own_line(report):
    unmeasured = report.measurements[0].model_copy(
        update={"provider": "cuda", "measured": False, "reason": "CUDAExecutionProvider is not available here"}
    )
    slower = report.measurements[0].model_copy(update={"speedup": 0.9})
    view = report.model_copy(update={"measurements": [slower, unmeasured]})
    lines = rendered(report_view(view))
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    reason = next(line for line in lines if "not measured" in line)
    assert "│" not in reason  # not squeezed into a table cell
    assert any("1.11× slower" in line for line in lines)
    markdown = render_markdown(view)
    assert "1.11× slower" in markdown and "faster" not in markdown
    assert "**cuda: not measured**" in markdown
    assert "{'" not in markdown  # pass details are spelled out, not Python dicts


def test_bench_table_fits_80_columns_and_tells_models_of_the_same_name_apart(runner, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(CNN, tmp_path / folder / "model.onnx")
    args = ["bench", str(tmp_path / "a" / "model.onnx"), str(tmp_path / "b" / "model.onnx"), "--json"]
    result = runner.invoke(app, [*args, "--runs", "3", "--warmup", "1", "--min-time", "0", "--batch-sizes", "1,32"])
    assert result.exit_code == 0, result.output
    from optc.measure.bench import BenchReport

    # Latencies and scatter as a slow model on a busy machine has them, so the layout holds whatever this machine
    # measured.
    slow = _every_latency_set(json.loads(result.stdout), 12345.678)
    lines = rendered(bench_view(BenchReport.model_validate(slow)))
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)
    legend = [line for line in lines if line.startswith("#")]
    assert legend == [f"#0  {tmp_path / 'a' / 'model.onnx'}", f"#1  {tmp_path / 'b' / 'model.onnx'}"]


BUSY = {"cv": 1.35, "noise_bound": 10.5}  # what a run beside another measured: the layout must hold for it too


def _every_latency_set(value, ms: float):
    if isinstance(value, dict):
        return {
            k: ms
            if k.endswith("_ms") and isinstance(v, float)
            else BUSY[k]
            if k in BUSY and isinstance(v, float)
            else _every_latency_set(v, ms)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_every_latency_set(v, ms) for v in value]
    return value


def test_magnitude_pruning_shows_the_gzip_size_in_the_summary(runner, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(
        app, ["compress", str(CNN), "-r", "prune-magnitude-50", "-o", str(out), "--data", str(CNN_TEST)]
    )
    assert result.exit_code in (0, 1), result.output
    written = out if out.exists() else tmp_path / "m.rejected.onnx"
    markdown = report_of(written, ".md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| gzip size"))
    ratio = float(row.rstrip("| ").rsplit("|", 1)[1].strip().rstrip("×"))
    assert ratio < 0.8  # half the weights are zero: the compressed file shrinks though the raw one does not


def test_latency_chart_axis_is_sized_to_the_bars_not_the_outliers():
    svg = latency_chart("t", "t", [LatencyRow("a", 1.0, 1.0, 1.2, 500.0, 900.0, 20.0)])
    bar = re.search(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)
    assert float(bar.group(2)) > 40  # the p50–p90 bar is visible, not a one-pixel sliver
    assert "→" in svg  # and what lies beyond the axis is marked


def test_library_warnings_stay_out_of_the_error_output(runner, tmp_path, fast_recipe, monkeypatch):
    real = optc.compress.run_passes

    def noisy(*args, **kwargs):
        warnings.warn("divide by zero encountered in log", RuntimeWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(optc.compress, "run_passes", noisy)
    recipe = fast_recipe(DYNAMIC_PASS)
    result = runner.invoke(
        app, ["compress", str(CNN), "-r", str(recipe), "-o", str(tmp_path / "o.onnx"), "--data", str(CNN_TEST)]
    )
    assert result.exit_code == 0 and "divide by zero" not in result.stderr


COMMANDS = [["compress"], ["inspect"], ["bench"], ["compare"], ["recipes", "show"], ["report", "show"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_names_what_each_option_takes(runner, command):
    text = runner.invoke(app, [*command, "--help"], terminal_width=100).stdout
    assert "{" not in text.split("\n", 1)[0]  # the usage line: MODEL, not {model}
    assert "<list[str]>" not in text and "<int range>" not in text
    option_lines = [line for line in text.splitlines() if line.lstrip().startswith("-")]
    assert not any("<str>" in line or "<path>" in line for line in option_lines)
    if command[0] in ("compress", "bench", "compare"):
        assert "--providers" in text
    if command[0] in ("compress", "inspect", "bench", "compare"):
        assert "--quiet" in text
    assert "130" in text  # every exit code is listed


def test_examples_in_help_are_not_rewrapped(runner):
    text = runner.invoke(app, ["compress", "--help"], terminal_width=80).stdout
    assert "optc compress model.onnx -r my-recipe.yaml -o out.onnx --data eval.npz \\" in text
