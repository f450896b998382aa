"""Magnitude pruning: the asked sparsity within one weight per layer, shapes kept, exclusions honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import prune_graphs as graphs
import pytest
from onnx import numpy_helper

from optc.errors import PassError
from optc.passes.prune.config import PruneConfig
from optc.passes.prune.run import run_prune


def prune(model: onnx.ModelProto, tmp_path: Path, **fields):
    config = PruneConfig.model_validate({"type": "prune", "method": "magnitude", **fields})
    return run_prune(model, config, graphs.pass_context(tmp_path, "magnitude"))


def zeros(model: onnx.ModelProto) -> dict[str, int]:
    return {t.name: int(np.sum(numpy_helper.to_array(t) == 0)) for t in model.graph.initializer}


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_per_layer_hits_the_sparsity_within_one_weight_per_layer(tmp_path, sparsity):
    model = graphs.concat()  # random weights: no zeros besides the ones set in convA/convB
    before = zeros(model)
    outcome = prune(model, tmp_path, sparsity=sparsity, dense_first_last=False)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    after = zeros(outcome.model)
    for name in ("convA.w", "convB.w", "out.w"):
        assert abs(after[name] - max(sparsity * sizes[name], before[name])) <= 1, name
    for name in ("convA.b", "convB.b"):  # biases are not weights of the layer: left alone
        assert after[name] == before[name]
    assert graphs.shapes(outcome.model) == graphs.shapes(model)
    rows = {row["layer"]: row for row in outcome.details["layers"]}
    assert rows["out"]["zeros"] == after["out.w"]


def test_global_scope_hits_the_overall_sparsity(tmp_path):
    model = graphs.conv_flatten_gemm()
    outcome = prune(model, tmp_path, sparsity=0.6, scope="global", dense_first_last=False)
    rows = outcome.details["layers"]
    total = sum(r["weights"] for r in rows)
    assert abs(sum(r["zeros"] for r in rows) - 0.6 * total) <= 1
    assert outcome.details["overall_sparsity"] == pytest.approx(0.6, abs=1 / total)


def test_first_and_last_layers_stay_dense_by_default(tmp_path):
    model = graphs.conv_flatten_gemm()
    outcome = prune(model, tmp_path, sparsity=0.7)
    assert outcome.details["dense_layers"] == ["conv", "fc2"]
    after, before = zeros(outcome.model), zeros(model)
    assert after["conv.w"] == before["conv.w"] and after["fc2.w"] == before["fc2.w"]
    assert after["fc1.w"] == round(0.7 * 960)


def test_exclude_and_op_types_leave_those_layers_dense(tmp_path):
    model = graphs.concat()
    outcome = prune(
        model, tmp_path, sparsity=0.5, dense_first_last=False, exclude={"nodes": ["convB"]}, op_types=["Conv"]
    )
    assert [row["layer"] for row in outcome.details["layers"]] == ["convA", "out"]
    assert zeros(outcome.model)["convB.w"] == zeros(model)["convB.w"]


def test_report_gives_gzip_sizes_and_says_latency_does_not_change(tmp_path):
    outcome = prune(graphs.conv_flatten_gemm(), tmp_path, sparsity=0.8)
    details = outcome.details
    assert details["gzip_bytes_after"] < details["gzip_bytes_before"]
    assert "latency does not change" in details["note"]


def test_nothing_left_to_prune_is_a_pass_error_naming_the_block(tmp_path):
    with pytest.raises(PassError, match=r"passes\[0\] prune \(magnitude\): no Conv/Gemm/MatMul.*kept dense"):
        prune(graphs.chain(), tmp_path, sparsity=0.5)
