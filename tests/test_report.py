"""report.json's published schema, and saved reports re-rendered by optc report show."""

import json

import pytest

from optc.cli import app
from optc.report.schema import SCHEMA_VERSION
from tests.conftest import CNN, CNN_TEST, DYNAMIC_PASS, write_fast_recipe


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory):
    """One compress run with --profile; its report.json, .md and .html."""
    from typer.testing import CliRunner

    folder = tmp_path_factory.mktemp("report")
    recipe = write_fast_recipe(folder, DYNAMIC_PASS)
    args = ["compress", str(CNN), "-r", str(recipe), "-o", str(folder / "m.onnx"), "--data", str(CNN_TEST)]
    result = CliRunner().invoke(app, [*args, "--profile", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["written"]["report html"].endswith("m.report.html")
    return folder / "m.report.json"


def test_schema_is_published_and_validates_the_saved_report(runner, saved_report):
    schema = json.loads(runner.invoke(app, ["report", "schema"]).stdout)
    assert schema["title"] == "optc report" and "schema_version" in schema["properties"]
    report = json.loads(saved_report.read_text())
    assert report["schema_version"] == SCHEMA_VERSION
    assert set(schema["required"]) <= set(report)


def test_compress_profile_lands_in_the_report(saved_report):
    cpu = json.loads(saved_report.read_text())["measurements"][0]
    ops = {o["op_type"]: o for o in cpu["profile"]["ops"]}
    assert sum(o["after_share"] for o in ops.values()) == pytest.approx(1.0)
    assert any(o["before_share"] == 0 and o["after_share"] > 0 for o in ops.values())  # an op type the pass brought


@pytest.mark.parametrize(
    ("fmt", "marker"), [("markdown", "# optc report"), ("html", "<svg"), ("json", '"schema_version"')]
)
def test_show_rerenders_a_saved_report(runner, saved_report, tmp_path, fmt, marker):
    shown = runner.invoke(app, ["report", "show", str(saved_report), "--format", fmt])
    assert shown.exit_code == 0, shown.output
    assert marker in shown.stdout
    out = tmp_path / f"again.{fmt}"
    assert runner.invoke(app, ["report", "show", str(saved_report), "-f", fmt, "-o", str(out)]).exit_code == 0
    assert out.read_text() == shown.stdout


def test_show_in_the_terminal(runner, saved_report):
    shown = runner.invoke(app, ["report", "show", str(saved_report)])
    assert shown.exit_code == 0 and "p50 latency" in shown.stdout and "time per op type" in shown.stdout
    assert (saved_report.with_suffix(".html")).read_text() == runner.invoke(
        app, ["report", "show", str(saved_report), "-f", "html"]
    ).stdout


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: {**r, "schema_version": SCHEMA_VERSION + 1}, "newer than this optc reads"),
        (lambda r: {k: v for k, v in r.items() if k != "schema_version"}, "no schema_version"),
        (lambda r: {**r, "size_ratio": "small"}, "size_ratio"),
    ],
)
def test_show_refuses_reports_it_cannot_read(runner, saved_report, tmp_path, edit, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(edit(json.loads(saved_report.read_text()))))
    result = runner.invoke(app, ["report", "show", str(bad)])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_show_of_a_missing_or_broken_file_exits_2(runner, tmp_path):
    assert runner.invoke(app, ["report", "show", str(tmp_path / "none.json")]).exit_code == 2
    (tmp_path / "broken.json").write_text("{")
    broken = runner.invoke(app, ["report", "show", str(tmp_path / "broken.json")])
    assert broken.exit_code == 2 and "not a readable JSON" in broken.stderr
