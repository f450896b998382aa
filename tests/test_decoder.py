"""Decoders (input_ids + KV cache + logits): prefill and decode-step latency, next-token agreement, perplexity on
token-only evaluation data. The decoder is the bench's seeded LLaMA-shaped builder at its tiny preset."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optc.cli import app
from optc.data import input_specs, load_dataset
from optc.measure import pair
from optc.measure.decoder import decode_feed, decoder_io, prefill_feed
from tests.conftest import ROOT, mlp_model, report_of, write_fast_recipe


def _decoder_builder():
    spec = importlib.util.spec_from_file_location("decoder_model", ROOT / "bench" / "decoder_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("decoder_model", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    builder = _decoder_builder()
    path = builder.build_decoder(builder.PRESETS["tiny"], "fp32", tmp_path_factory.mktemp("decoder") / "model.onnx")
    return path, builder.PRESETS["tiny"]


def specs_and_outputs(path):
    model = onnx.load(path, load_external_data=False)
    return input_specs(model), [o.name for o in model.graph.output]


def test_decoder_io_is_recognised_only_with_tokens_cache_and_logits(tiny_decoder):
    io = decoder_io(*specs_and_outputs(tiny_decoder[0]))
    assert io is not None
    assert io.past == [f"past_key_values.{layer}.{part}" for layer in range(2) for part in ("key", "value")]
    assert io.present == [f"present.{layer}.{part}" for layer in range(2) for part in ("key", "value")]
    assert decoder_io(input_specs(mlp_model()), ["y"]) is None


def test_decode_feed_continues_the_prefill_with_its_cache(tiny_decoder):
    path, config = tiny_decoder
    specs, outputs = specs_and_outputs(path)
    io = decoder_io(specs, outputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens = np.arange(1, 9, dtype=np.int64)[None]
    prefill = prefill_feed(io, specs, tokens)
    assert prefill["past_key_values.0.key"].shape == (1, config.kv_heads, 0, config.head_dim)
    step = decode_feed(io, specs, prefill, session)
    assert step["input_ids"].shape == (1, 1)
    assert step["attention_mask"].shape == (1, 9)
    assert step["position_ids"].tolist() == [[8]]
    assert step["past_key_values.1.value"].shape == (1, config.kv_heads, 8, config.head_dim)
    # The step's logits are those of the same 9 tokens run as one prefill.
    whole = prefill_feed(io, specs, np.concatenate([tokens, step["input_ids"]], axis=1))
    logits_step = session.run(["logits"], step)[0][0, -1]
    logits_whole = session.run(["logits"], whole)[0][0, -1]
    np.testing.assert_allclose(logits_step, logits_whole, rtol=1e-4, atol=1e-4)


def test_token_only_data_derives_mask_positions_and_an_empty_cache(tiny_decoder, tmp_path):
    path, config = tiny_decoder
    specs, _ = specs_and_outputs(path)
    tokens = np.random.default_rng(0).integers(0, config.vocab, (3, 12))
    np.savez(tmp_path / "tokens.npz", input_ids=tokens)
    data = load_dataset(tmp_path / "tokens.npz", specs)
    assert data.inputs["attention_mask"].tolist() == np.ones((3, 12), np.int64).tolist()
    assert data.inputs["position_ids"][2].tolist() == list(range(12))
    assert data.inputs["past_key_values.0.key"].shape == (3, config.kv_heads, 0, config.head_dim)


def compress_decoder(runner, path, out, recipe, *extra):
    result = runner.invoke(app, ["compress", str(path), "--recipe", str(recipe), "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(report_of(out).read_text()), result.output


def test_a_decoder_is_measured_by_prefill_decode_step_and_next_token_agreement(tiny_decoder, tmp_path, runner):
    recipe = write_fast_recipe(
        tmp_path, "  - type: quantize\n    mode: weight_only\n    weights: {bits: 4, block_size: 16}\n"
    )
    report, output = compress_decoder(runner, tiny_decoder[0], tmp_path / "int4.onnx", recipe)
    cpu = report["measurements"][0]
    decoder = cpu["decoder"]
    assert decoder["prefill"]["tokens"] == decoder["decode"]["tokens"] > 0
    assert cpu["optimized"] == decoder["decode"]["optimized"]  # the headline latency is the decode step's
    assert decoder["positions"] == cpu["accuracy"]["samples"] * decoder["prefill"]["tokens"]
    assert 0.0 <= decoder["next_token_agreement"] <= 100.0
    assert decoder["perplexity_original"] is None  # synthetic tokens: no perplexity to speak of
    assert "decode step, cache" in output and "next-token top-1" in output
    markdown = report_of(tmp_path / "int4.onnx", ".md").read_text()
    assert "prefill" in markdown and "next-token top-1 agreement" in markdown
    html = report_of(tmp_path / "int4.onnx", ".html").read_text()
    assert 'data-chart="latency-cpu-prefill"' in html and 'data-chart="latency-cpu-decode"' in html


def test_real_token_sequences_give_perplexity_and_an_unchanged_model_agrees_everywhere(tiny_decoder, tmp_path, runner):
    path, config = tiny_decoder
    tokens = np.random.default_rng(1).integers(0, config.vocab, (4, 16))
    np.savez(tmp_path / "tokens.npz", input_ids=tokens)
    recipe = write_fast_recipe(tmp_path, "  - type: fuse\n")
    report, _ = compress_decoder(runner, path, tmp_path / "fused.onnx", recipe, "--data", str(tmp_path / "tokens.npz"))
    decoder = report["measurements"][0]["decoder"]
    assert decoder["positions"] == 4 * 16
    assert decoder["next_token_agreement"] == 100.0
    assert decoder["perplexity_original"] == pytest.approx(decoder["perplexity_optimized"], rel=1e-3)
    # Perplexity is exp of the mean next-token negative log-likelihood, computed here independently.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    specs, outputs = specs_and_outputs(path)
    io = decoder_io(specs, outputs)
    nll = []
    for row in tokens:
        logits = session.run(["logits"], prefill_feed(io, specs, row[None]))[0][0].astype(np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        nll.append(-np.mean([log_probs[t, row[t + 1]] for t in range(len(row) - 1)]))
    assert decoder["perplexity_original"] == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-6)


def test_a_decoder_measured_one_session_at_a_time_gives_the_same_agreement(tiny_decoder, tmp_path, runner, monkeypatch):
    recipe = write_fast_recipe(tmp_path, "  - type: quantize\n    mode: weight_only\n    weights: {block_size: 16}\n")
    together, _ = compress_decoder(runner, tiny_decoder[0], tmp_path / "a.onnx", recipe)
    monkeypatch.setattr(pair, "TOGETHER_LIMIT_BYTES", 0)
    apart, _ = compress_decoder(runner, tiny_decoder[0], tmp_path / "b.onnx", recipe)
    first, second = together["measurements"][0], apart["measurements"][0]
    assert (first["interleaved"], second["interleaved"]) == (True, False)
    assert second["decoder"]["next_token_agreement"] == first["decoder"]["next_token_agreement"]
    assert second["decoder"]["decode"]["optimized"]["runs"] >= 3
