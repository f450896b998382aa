"""``sparsity: auto``: the bisection itself, and the whole flow through the CLI on the sample CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import prune_graphs as graphs
from typer.testing import CliRunner

from optc.cli.app import app
from optc.data import Dataset
from optc.passes.prune.config import PruneConfig
from optc.passes.prune.run import run_prune
from optc.passes.prune.search import CurvePoint, bisect_sparsity

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def fake_measure(drop_per_unit: float):
    def measure(sparsity: float, _model: onnx.ModelProto) -> CurvePoint:
        drop = drop_per_unit * sparsity
        return CurvePoint(sparsity, 100 - drop, drop, 1, 1, 1.0, "top1")

    return measure


def test_bisection_finds_the_largest_sparsity_within_the_budget():
    model = graphs.chain()
    result = bisect_sparsity(lambda s: model, fake_measure(10.0), 0.0, 0.9, steps=6, budget=3.0)
    assert 0.3 - 0.9 / 2**6 <= result.sparsity <= 0.3  # drop = 10 × sparsity, budget 3 points
    assert len(result.curve) == 6 + 2  # the low end, the high end, then one point per step
    assert [p.sparsity for p in result.curve] == sorted(p.sparsity for p in result.curve)


def test_bisection_takes_the_high_end_when_it_fits_and_reports_none_when_nothing_does():
    model = graphs.chain()
    assert bisect_sparsity(lambda s: model, fake_measure(1.0), 0.0, 0.9, 6, 3.0).sparsity == 0.9
    assert bisect_sparsity(lambda s: model, fake_measure(10.0), 0.5, 0.9, 6, 3.0).sparsity is None


def compress(tmp_path: Path, recipe: str, *extra: str) -> dict:
    result = CliRunner().invoke(
        app,
        [
            "compress",
            str(SAMPLES / "digits_cnn.onnx"),
            "--recipe",
            recipe,
            "-o",
            str(tmp_path / "out.onnx"),
            "--data",
            str(SAMPLES / "digits_test.npz"),
            "--json",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["report"]


def test_prune_auto_on_the_sample_cnn_stays_within_its_budget_and_reports_the_curve(tmp_path):
    report = compress(tmp_path, "prune-auto", "--calibration-data", str(SAMPLES / "digits_calib.npz"))
    prune = report["passes"][0]
    search, curve = prune["details"]["search"], prune["details"]["curve"]
    chosen = next(point for point in curve if point["sparsity"] == search["chosen"])
    budget = search["accuracy_budget"]
    assert search["metric"] == "top1" and chosen["drop"] <= budget and search["chosen"] > 0
    assert all(point["drop"] > budget for point in curve if point["sparsity"] > search["chosen"])
    assert prune["details"]["reconstructed_on"].endswith("digits_calib.npz")
    assert prune["details"]["parameters_after"] < prune["details"]["parameters_before"]
    assert report["measurements"][0]["accuracy"]["drop"] <= 1.0  # after int8 too
    assert [p["type"] for p in report["passes"]] == ["prune", "fuse", "quantize"]


def test_prune_channels_25_shrinks_the_sample_cnn_and_keeps_its_interface(tmp_path):
    report = compress(tmp_path, "prune-channels-25", "--min-cosine", "-1")  # pruning without fine-tuning costs fidelity
    details = report["passes"][0]["details"]
    assert {row["layer"]: row["kept"] for row in details["layers"]} == {
        "conv1": 12,
        "conv2": 24,
        "conv3": 48,
        "fc1": 48,
    }
    assert details["left_alone"] == [{"layers": "fc2", "reason": "reaches graph output 'logits'"}]
    model = onnx.load(str(tmp_path / "out.onnx"))
    original = onnx.load(str(SAMPLES / "digits_cnn.onnx"))
    assert model.graph.input[0] == original.graph.input[0] and model.graph.output[0] == original.graph.output[0]
    assert report["optimized"]["parameters"] < 0.6 * report["original"]["parameters"]
    logits = graphs.run(model, {"input": np.load(SAMPLES / "digits_test.npz")["input"][:4]})[0]
    assert logits.shape == (4, 10)


def test_a_search_that_can_prune_nothing_within_the_budget_says_so_and_leaves_the_model_whole(tmp_path):
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(
        "version: 1\nname: strict\npasses:\n  - type: prune\n    method: channel\n    sparsity: auto\n"
        "    accuracy_budget: 0.01\n    search_steps: 1\n"
    )
    report = compress(tmp_path, str(recipe))
    details = report["passes"][0]["details"]
    assert details["search"]["chosen"] == 0 and details["channels_removed"] == 0
    assert any(
        "nothing could be pruned within the 0.01-point budget (sparsity 0.45 cost" in w for w in report["warnings"]
    )


def test_a_search_that_prunes_nothing_returns_the_model_as_it_came_not_its_surgery_form(tmp_path):
    model = graphs.conv_silu_split()  # channel surgery writes its Conv as one Conv per part of the Split
    rng = np.random.default_rng(0)
    weight = next(t for t in model.graph.initializer if t.name == "conv.w")
    weight.CopyFrom(onnx.numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv.w"))
    dataset = Dataset(inputs={"x": rng.standard_normal((8, 3, 6, 6)).astype(np.float32)}, labels=None, source="x.npz")
    config = PruneConfig(type="prune", method="channel", sparsity="auto", accuracy_budget=0.01, search_steps=1)
    outcome = run_prune(model, config, graphs.pass_context(tmp_path, "channel", dataset))
    assert outcome.details["channels_removed"] == 0
    assert any("nothing could be pruned" in w for w in outcome.warnings)
    assert outcome.model.graph == model.graph
