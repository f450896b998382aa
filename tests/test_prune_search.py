"""``sparsity: auto``: the bisection itself, and the whole flow through the CLI on the sample CNN."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import prune_graphs as graphs
import pytest
from typer.testing import CliRunner

from optc.cli.app import app
from optc.data import Dataset
from optc.passes.prune import search
from optc.passes.prune.search import CurvePoint, bisect_sparsity, confirmed_on_whole

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def fake_measure(drop_per_unit: float):
    def measure(sparsity: float, _model: onnx.ModelProto) -> CurvePoint:
        drop = drop_per_unit * sparsity
        return CurvePoint(sparsity, 100 - drop, drop, 1, 1, 1.0, "top1", 10)

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


def run_cli(tmp_path: Path, recipe: str, *extra: str):
    return CliRunner().invoke(
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


def compress(tmp_path: Path, recipe: str, *extra: str) -> dict:
    result = run_cli(tmp_path, recipe, *extra)
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


STRICT_PRUNE = (
    "version: 1\nname: strict\npasses:\n  - type: prune\n    method: channel\n    sparsity: auto\n"
    "    accuracy_budget: 0.01\n    search_steps: 1\n"
)


def test_a_search_that_can_prune_nothing_within_the_budget_is_refused_with_what_the_first_step_cost(tmp_path):
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(STRICT_PRUNE)
    result = run_cli(tmp_path, str(recipe))
    assert result.exit_code == 3
    assert "nothing could be pruned within the 0.01-point budget (sparsity 0.45 cost" in result.output
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("quantize_optional", [True, False])
def test_an_optional_prune_that_can_do_nothing_is_skipped_and_the_passes_after_it_still_run(
    tmp_path, quantize_optional
):
    """With int8 not optional, the recipe's only optional pass was skipped, and the recipe used to be refused as if
    no pass had improved the model."""
    recipe = tmp_path / "strict.yaml"
    quantize = "  - type: quantize\n    mode: dynamic\n" + ("    optional: true\n" if quantize_optional else "")
    recipe.write_text(STRICT_PRUNE + "    optional: true\n  - type: fuse\n" + quantize)
    report = compress(tmp_path, str(recipe), "--min-cosine", "-1")
    prune, fuse, quantize = report["passes"]
    assert prune["skipped"].startswith("nothing could be pruned within the 0.01-point budget")
    assert prune["nodes_before"] == prune["nodes_after"] and prune["size_before"] == prune["size_after"]
    assert fuse["skipped"] is None and fuse["nodes_after"] < fuse["nodes_before"]  # BatchNorm folded
    assert quantize["skipped"] is None and quantize["size_after"] < quantize["size_before"] / 2
    for suffix in (".md", ".html"):
        assert "passes[0] prune (channel) (skipped)" in (tmp_path / f"out.report{suffix}").read_text()
    assert any("passes[0] prune (channel) skipped (optional): nothing could be pruned" in w for w in report["warnings"])


def test_a_recipe_whose_optional_passes_are_all_skipped_is_refused_with_each_reason(tmp_path):
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(
        STRICT_PRUNE
        + "    optional: true\n  - type: fuse\n  - type: quantize\n    mode: dynamic\n    min_cosine: 1.0\n"
        + "    optional: true\n"  # no int8 output equals the float one
    )
    result = run_cli(tmp_path, str(recipe))
    assert result.exit_code == 3, result.output
    assert "none of its optional passes can do anything for this model" in result.output
    assert "passes[0] prune (channel): nothing could be pruned" in result.output
    assert "passes[2] quantize (dynamic): " in result.output.split("none of its optional passes")[1]
    assert not (tmp_path / "out.onnx").exists()


def test_a_sparsity_found_on_a_head_of_the_data_is_kept_only_where_the_whole_data_fits_the_budget():
    """A search on the first samples of slow evaluation data (Evaluator.for_search) is measured again on the whole:
    here the whole costs twice what the head did, so the largest sparsity the head allowed misses the budget and the
    next lower one that fitted on the head is taken, measured on the whole."""
    model = graphs.chain()
    on_head = bisect_sparsity(lambda s: model, fake_measure(5.0), 0.0, 0.9, steps=4, budget=3.0)
    assert 0.5 < on_head.sparsity <= 0.6

    def on_whole(sparsity: float, _model: onnx.ModelProto) -> CurvePoint:
        drop = 10.0 * sparsity
        return CurvePoint(sparsity, 100 - drop, drop, 1, 1, 1.0, "top1", 40)

    confirmed = confirmed_on_whole(on_head, lambda s: model, on_whole, budget=3.0)
    assert confirmed.sparsity is not None and confirmed.sparsity <= 0.3
    measured = {p.sparsity: p.samples for p in confirmed.curve}
    assert measured[confirmed.sparsity] == 40 and measured[on_head.sparsity] == 40  # tried, missed, shown
    assert sorted(measured) == [p.sparsity for p in confirmed.curve] and len(confirmed.curve) == len(on_head.curve)

    def nothing_fits(sparsity: float, _model: onnx.ModelProto) -> CurvePoint:
        return CurvePoint(sparsity, 95.0, 5.0, 1, 1, 1.0, "top1", 40)

    assert confirmed_on_whole(on_head, lambda s: model, nothing_fits, budget=3.0).sparsity is None


def test_a_sparsity_measured_again_on_the_whole_data_reuses_its_latency_probe(monkeypatch, tmp_path):
    """The whole data's check of a sparsity found on a head is the same model: its latency was probed already (on
    DNSMOS each probe cost 6 s, four of them in confirmed_on_whole)."""
    model = graphs.chain()
    data = Dataset(inputs={"x": np.ones((16, 3, 8, 8), np.float32)}, labels=None, source="test")
    probes = []
    real_probe = search.measure_interleaved
    monkeypatch.setattr(search, "measure_interleaved", lambda *a, **k: probes.append(1) or real_probe(*a, **k))
    meter = search.CandidateMeter(model, data, "auto", {"x": np.ones((1, 3, 8, 8), np.float32)}, tmp_path)
    head = copy.copy(meter)
    first = head(0.5, model)
    again = meter(0.5, model)
    assert len(probes) == 1 and again.latency_ms == first.latency_ms
    meter(0.25, model)
    assert len(probes) == 2
