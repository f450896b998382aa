"""The fuse pass end to end through the CLI on the sample models: what it reports, the transformer and ONNX Runtime
options, recipe validation, and the proof step catching a broken rewrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from optc.cli import app
from optc.passes.fuse import driver
from optc.passes.fuse.graph import GraphIndex, copy_model
from optc.passes.fuse.transformer import detect_encoder
from tests.conftest import SAMPLES, report_of
from tests.fuse_graphs import ops

CNN, CNN_TEST = SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_test.npz"
BERT, BERT_TEST = SAMPLES / "tiny_bert.onnx", SAMPLES / "tiny_bert_data.npz"


def compress(runner, fast_recipe, tmp_path: Path, model: Path, data: Path, fuse_yaml: str, extra_pass: str = ""):
    recipe = fast_recipe(f"  - type: fuse\n{fuse_yaml}{extra_pass}")
    out = tmp_path / "out" / "model.onnx"
    result = runner.invoke(app, ["compress", str(model), "-r", str(recipe), "-o", str(out), "--data", str(data)])
    report = json.loads(report_of(out).read_text()) if out.exists() else None
    return result, out, report


def fusion_counts(details: dict) -> dict[str, int]:
    return {row["fusion"]: row["applied"] for row in details["fusions"]}


def test_fuse_folds_the_cnn_batchnorms_and_proves_the_outputs(runner, fast_recipe, tmp_path):
    result, out, report = compress(runner, fast_recipe, tmp_path, CNN, CNN_TEST, "    portable: true\n")
    assert result.exit_code == 0, result.output
    details = report["passes"][0]["details"]
    assert fusion_counts(details)["fold_batchnorm"] == 3
    assert (details["nodes_before"], details["nodes_after"]) == (14, 11)
    assert "BatchNormalization" not in ops(onnx.load_model(str(out)))
    (proof,) = details["proof"]
    assert proof["output"] == "logits" and proof["ok"] and proof["max_abs_diff"] <= proof["allowed"]
    assert details["proof_samples"] == 32 and not details["needs_onnxruntime"]
    assert report["measurements"][0]["accuracy"]["drop"] == 0


def test_skip_leaves_a_named_rewrite_out(runner, fast_recipe, tmp_path):
    result, out, report = compress(runner, fast_recipe, tmp_path, CNN, CNN_TEST, "    skip: [fold_batchnorm]\n")
    assert result.exit_code == 0, result.output
    assert ops(onnx.load_model(str(out)))["BatchNormalization"] == 3
    assert "fold_batchnorm" not in fusion_counts(report["passes"][0]["details"])


def test_broken_rewrite_is_caught_by_the_proof_and_exits_3_naming_the_output(
    runner, fast_recipe, tmp_path, monkeypatch
):
    def fold_batchnorm_wrongly(model):
        """Drops each BatchNorm without folding it: the graph stays valid, the numbers do not."""
        model = copy_model(model)
        index = GraphIndex(model)
        dropped = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
        for node in dropped:
            index.bypass(node, node.input[0])
        return model, len(dropped)

    entry = driver.rewrites()["fold_batchnorm"]
    monkeypatch.setitem(
        driver._REWRITES, "fold_batchnorm", driver.Rewrite(entry.name, entry.summary, fold_batchnorm_wrongly)
    )
    result, out, _ = compress(runner, fast_recipe, tmp_path, CNN, CNN_TEST, "    portable: true\n")
    assert result.exit_code == 3, result.output
    assert "passes[0] fuse" in result.stderr and "logits" in result.stderr and "moved" in result.stderr
    assert "fold_batchnorm" in result.stderr  # the hint names what fired
    assert not out.exists()


def test_transformer_auto_fuses_tiny_bert_and_says_it_needs_onnxruntime(runner, fast_recipe, tmp_path):
    result, out, report = compress(runner, fast_recipe, tmp_path, BERT, BERT_TEST, "    transformer: auto\n")
    assert result.exit_code == 0, result.output
    details = report["passes"][0]["details"]
    counts = fusion_counts(details)
    assert counts["transformer: Attention"] == 2
    assert counts["transformer: SkipLayerNormalization"] == 4
    assert counts["transformer: BiasGelu"] == 2
    assert details["transformer"] == {"model_type": "bert", "num_heads": 4, "hidden_size": 64, "detected": True}
    assert details["needs_onnxruntime"] and "com.microsoft.Attention" in details["contrib_ops"]
    assert any("needs ONNX Runtime" in w for w in report["warnings"])
    assert ops(onnx.load_model(str(out)))["Softmax"] == 0
    assert report["measurements"][0]["accuracy"]["optimized"] == pytest.approx(100.0)


@pytest.mark.parametrize("setting", [True, False])
def test_embed_layer_norm_setting_reaches_the_transformer_optimizer(
    runner, fast_recipe, tmp_path, monkeypatch, setting
):
    """tiny_bert's embeddings are not a shape EmbedLayerNormalization fuses, so the setting is checked where it goes;
    on all-MiniLM-L6 the fusion swallowed the word-embedding Gather, which bert-int8 now quantizes."""
    import optc.passes.fuse.transformer as transformer

    seen = []

    def spy(model, **kwargs):
        seen.append(kwargs["optimization_options"].enable_embed_layer_norm)
        return optimize_model(model, **kwargs)

    optimize_model = transformer.optimize_model
    monkeypatch.setattr(transformer, "optimize_model", spy)
    fuse = f"    transformer: auto\n    embed_layer_norm: {str(setting).lower()}\n"
    result, _, _ = compress(runner, fast_recipe, tmp_path, BERT, BERT_TEST, fuse)
    assert result.exit_code == 0, result.output
    assert seen == [setting]


def test_bert_int8_recipe_quantizes_the_fused_attention(runner, tmp_path):
    out = tmp_path / "bert.int8.onnx"
    args = ["compress", str(BERT), "-r", "bert-int8", "-o", str(out), "--data", str(BERT_TEST)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(report_of(out).read_text())
    assert [p["type"] for p in report["passes"]] == ["fuse", "quantize"]
    quantized = onnx.load_model(str(out))
    assert ops(quantized)["QAttention"] == 2
    tables = {t.name for t in quantized.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert any(n.op_type == "Gather" and n.input[0] in tables for n in quantized.graph.node)  # the word embeddings
    assert report["measurements"][0]["accuracy"]["drop"] <= 1.0


def test_ort_level_basic_stays_standard(runner, fast_recipe, tmp_path):
    result, out, report = compress(runner, fast_recipe, tmp_path, CNN, CNN_TEST, "    ort_level: basic\n")
    assert result.exit_code == 0, result.output
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load_model(str(out)).graph.node)
    assert "ort_level: basic" in fusion_counts(report["passes"][0]["details"])


def test_ort_level_extended_is_reported_as_needing_onnxruntime(runner, fast_recipe, tmp_path):
    result, _, report = compress(runner, fast_recipe, tmp_path, CNN, CNN_TEST, "    ort_level: extended\n")
    assert result.exit_code == 0, result.output
    assert report["passes"][0]["details"]["needs_onnxruntime"]  # Conv+Relu become FusedConv


@pytest.mark.parametrize(
    ("fuse_yaml", "message"),
    [
        ("    portable: true\n    transformer: bert\n", "portable: true excludes transformer"),
        ("    portable: true\n    ort_level: extended\n", "portable: true excludes ort_level: extended"),
        ("    skip: [fold_everything]\n", "passes[0].skip[0]"),
        ("    num_heads: 4\n", "only apply with transformer"),
        ("    transformer: bert\n    num_heads: 5\n    hidden_size: 64\n", "not a multiple"),
    ],
)
def test_inconsistent_fuse_settings_exit_2(runner, fast_recipe, tmp_path, fuse_yaml, message):
    result, _, _ = compress(runner, fast_recipe, tmp_path, BERT, BERT_TEST, fuse_yaml)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_transformer_auto_on_a_cnn_exits_2_with_what_to_set(runner, fast_recipe, tmp_path):
    result, _, _ = compress(runner, fast_recipe, tmp_path, CNN, CNN_TEST, "    transformer: auto\n")
    assert result.exit_code == 2, result.output
    assert "no BERT-like encoder" in result.stderr and "num_heads" in result.stderr


def test_detect_encoder_reads_heads_and_hidden_size():
    assert detect_encoder(onnx.load_model(str(BERT))) == (4, 64)
    assert detect_encoder(onnx.load_model(str(CNN))) is None


def test_fuse_without_data_proves_on_synthetic_inputs(runner, fast_recipe, tmp_path):
    recipe = fast_recipe("  - type: fuse\n")
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["compress", str(CNN), "-r", str(recipe), "-o", str(out)])
    assert result.exit_code == 0, result.output
    details = json.loads(report_of(out).read_text())["passes"][0]["details"]
    assert details["proof_data"] == "synthetic" and details["proof"][0]["ok"]
    assert np.isfinite(details["proof"][0]["max_abs_diff"])
