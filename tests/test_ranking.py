"""Ranking nodes by damage: the one-pass ranking reads a bounded amount of input data, whatever the probe holds;
the ranking at the outputs charges each node with what its conversion does to the model's outputs."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.data import Dataset
from optc.model_facts import op_histogram
from optc.passes.fallback import (
    OUTPUT_RANKING_SAMPLES,
    PROBE_FEEDS,
    PROBE_SAMPLES,
    PROMOTION_ROUNDS,
    RANKING_INPUT_BYTES,
    RANKING_SELECTOR,
    NodeDamage,
    keep_in_float_until,
    output_ranking_feeds,
    probe_of,
    probe_reference,
    rank_by_damage,
    rank_by_output_damage,
    switchable_model,
)
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.quantize_matmul_dynamic import quantize_matmuls
from optc.passes.registry import PassContext
from tests.conftest import make_model


def relu_over(width: int):
    return make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
    )


def counted_feeds(width: int, count: int, pulled: list[int]):
    for i in range(count):
        pulled.append(i)
        yield {"x": np.full((1, width), i - 2, dtype=np.float32)}


def test_ranking_stops_reading_large_samples_at_its_byte_budget(tmp_path: Path):
    width = RANKING_INPUT_BYTES // 2 // 4  # two samples fill the budget
    pulled: list[int] = []
    ranking = rank_by_damage(relu_over(width), relu_over(width), counted_feeds(width, 64, pulled), tmp_path)
    assert [d.node for d in ranking] == ["relu"]
    assert len(pulled) == 3  # two used, the third seen to stop


def test_ranking_reads_every_small_sample(tmp_path: Path):
    pulled: list[int] = []
    rank_by_damage(relu_over(16), relu_over(16), counted_feeds(16, 64, pulled), tmp_path)
    assert len(pulled) == 64


def damped_and_direct() -> onnx.ModelProto:
    """y = b @ Wb + 0.003 · (a @ Wa): int8 wrecks ``damped`` locally (its input's outlier channel, which Wa ignores,
    takes the whole int8 range) but the damping hides it at the output; ``direct`` loses little locally, all of it
    at the output."""
    rng = np.random.default_rng(0)
    damped_weight = rng.standard_normal((16, 16)).astype(np.float32)
    damped_weight[0] = 0
    nodes = [
        helper.make_node("MatMul", ["a", "Wa"], ["ya"], name="damped"),
        helper.make_node("Mul", ["ya", "damping"], ["ya_small"], name="damp"),
        helper.make_node("MatMul", ["b", "Wb"], ["yb"], name="direct"),
        helper.make_node("Add", ["yb", "ya_small"], ["y"], name="sum"),
    ]
    weights = {
        "Wa": damped_weight,
        "Wb": rng.standard_normal((16, 16)).astype(np.float32),
        "damping": np.array(0.003, np.float32),
    }
    return make_model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 16]) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )


def outlier_inputs(samples: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((samples, 16)).astype(np.float32)
    a[:, 0] = 1000
    return {"a": a, "b": rng.standard_normal((samples, 16)).astype(np.float32)}


def test_output_ranking_charges_each_node_with_what_reaches_the_outputs(tmp_path: Path):
    model = damped_and_direct()
    inputs = outlier_inputs()
    feeds = [{name: values[i : i + 4] for name, values in inputs.items()} for i in range(0, 32, 4)]

    def convert(kept: set[str]) -> onnx.ModelProto:
        return quantize_matmuls(model, {"damped", "direct"} - kept, "int8", True, True)

    local = rank_by_damage(model, convert(set()), feeds, tmp_path, lambda n: n.op_type == "MatMul")
    assert [d.node for d in local] == ["damped", "direct"]  # the local SQNR loss gets it backwards
    at_outputs = rank_by_output_damage(model, convert, ["damped", "direct"], set(), feeds, tmp_path)
    assert [d.node for d in at_outputs] == ["direct", "damped"]
    assert at_outputs[0].noise_db > at_outputs[1].noise_db + 6  # measured 13 dB apart


def test_one_switchable_model_gives_each_candidate_converted_alone(tmp_path: Path):
    """The ranking runs one session in which an input picks the candidate converted; its outputs must be exactly
    those of the model converted with every other candidate in float."""
    model = damped_and_direct()
    inputs = outlier_inputs(4)

    def convert(kept: set[str]) -> onnx.ModelProto:
        return quantize_matmuls(model, {"damped", "direct"} - kept, "int8", True, True)

    switchable = switchable_model(model, convert(set()), ["damped", "direct"])
    onnx.checker.check_model(switchable, full_check=True)
    session = ort.InferenceSession(switchable.SerializeToString(), providers=["CPUExecutionProvider"])
    for index, name in enumerate(["damped", "direct"]):
        alone = convert({"damped", "direct"} - {name})
        expected = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
        got = session.run(None, {**inputs, RANKING_SELECTOR: np.array(index, dtype=np.int64)})
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-6, atol=1e-6)  # kernels may fuse differently
    float_outputs = session.run(None, {**inputs, RANKING_SELECTOR: np.array(-1, dtype=np.int64)})
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    np.testing.assert_allclose(float_outputs[0], expected[0], rtol=1e-6)


def test_no_switchable_model_when_the_conversion_renames_an_output():
    model = damped_and_direct()
    converted = quantize_matmuls(model, {"damped", "direct"}, "int8", True, True)
    next(n for n in converted.graph.node if "yb" in n.output).output[0] = "renamed"
    assert switchable_model(model, converted, ["damped", "direct"]) is None


def dynamic_context(tmp_path: Path) -> PassContext:
    return PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        target="x86-avx2",  # the same int8 defaults (7-bit weights) whatever CPU runs the test
        dataset=Dataset(inputs=outlier_inputs(), labels=None, source="synthetic"),
    )


@pytest.mark.parametrize("op_types", [None, ["MatMul", "Conv"]], ids=["optc-only", "with-onnxruntime-op-types"])
def test_dynamic_int8_keeps_in_float_the_node_that_hurts_the_outputs(tmp_path: Path, op_types):
    """Also where ONNX Runtime quantizes some op types (bert-int8's Attention): a conversion that leaves it nothing
    to do skips it, so ranking at the outputs stays cheap."""
    context = dynamic_context(tmp_path)
    config = QuantizeConfig(type="quantize", mode="dynamic", min_cosine=0.99999, op_types=op_types)
    outcome = run_quantize(damped_and_direct(), config, context)
    kept = [row for row in outcome.details["kept_in_float"] if row["reason"].startswith("fidelity target")]
    assert [row["node"] for row in kept] == ["direct"]
    assert "output_noise_db" in kept[0]
    assert op_histogram(outcome.model).get("MatMulInteger") == 1


def test_a_misranked_search_puts_the_node_that_made_the_difference_first(tmp_path: Path, monkeypatch):
    """Over the budget for ranking at the outputs, the one-pass ranking decides, and it gets this model backwards:
    ``damped`` alone kept in float misses the target, both pass. The node that made the difference, ``direct``, then
    goes first, and alone it is enough (both in float used to end in a refusal: every candidate kept)."""
    monkeypatch.setattr("optc.passes.quantize.OUTPUT_RANKING_BYTES", 1)
    context = dynamic_context(tmp_path)
    config = QuantizeConfig(type="quantize", mode="dynamic", min_cosine=0.99999)
    outcome = run_quantize(damped_and_direct(), config, context)
    kept = [row["node"] for row in outcome.details["kept_in_float"] if row["reason"].startswith("fidelity target")]
    assert kept == ["direct"]
    search = outcome.details["fidelity_search"]
    assert [(row["kept_in_float"], row["ok"], row.get("promoted")) for row in search[1:]] == [
        (1, False, None),
        (2, True, None),
        (1, True, 1),
    ]
    assert op_histogram(outcome.model).get("MatMulInteger") == 1


def test_the_probe_spans_several_feeds_even_where_one_feed_holds_all_its_samples():
    """A word segmenter's evaluation data is 32 texts of 64 characters, one text per feed: a probe of the first text
    alone passed dynamic int8 at cosine 0.997 where the 32 texts gave 0.986."""
    texts = [{"x": np.full((64, 21), i, np.float32)} for i in range(32)]
    assert len(probe_of(texts)) == PROBE_FEEDS
    one_each = [{"x": np.full((1, 21), i, np.float32)} for i in range(100)]
    assert len(probe_of(one_each)) == PROBE_SAMPLES
    assert len(probe_of(iter(texts[:3]))) == 3  # all there is


def test_the_search_finds_a_misranked_node_in_a_few_conversions_per_round():
    """1000 candidates, of which the first four by the ranking and the last are what the target needs: the shortest
    prefix is all 1000; with the last put first, 5; a node per conversion would have taken 1000."""
    names = [f"n{i}" for i in range(1000)]
    needed = {"n0", "n1", "n2", "n3", "n999"}
    ranking = [NodeDamage(name, "MatMul", 1000.0 - i, 0.0) for i, name in enumerate(names)]

    def acceptable(kept):
        return needed <= kept, {}

    fallback = keep_in_float_until(set, set(), lambda: ranking, acceptable, set(), "test")
    assert set(fallback.kept) == needed and fallback.model == needed
    rounds = 1 + PROMOTION_ROUNDS
    assert len(fallback.tried) <= 1 + rounds * 2 * 10  # doubling then bisecting: twice log2(1000) per round


def test_a_promotion_round_that_saves_little_is_the_last():
    """100 candidates, of which the target needs the 60th and the last by the ranking. Round one puts the last first
    and keeps 61; a second round (the 60th first) would keep 2, but round one saved under half, and another round
    costs about as many conversions as the first search."""
    names = [f"n{i}" for i in range(100)]
    ranking = [NodeDamage(name, "MatMul", 100.0 - i, 0.0) for i, name in enumerate(names)]

    def acceptable(kept):
        return {"n59", "n99"} <= kept, {}

    fallback = keep_in_float_until(set, set(), lambda: ranking, acceptable, set(), "test")
    assert len(fallback.kept) == 61 and fallback.kept[0] == "n99"
    assert max(row.get("promoted", 0) for row in fallback.tried) == 1


def test_a_probe_that_takes_long_to_run_is_cut_to_the_fewest_feeds_a_search_may_use(tmp_path: Path):
    model = make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    feeds = [{"x": np.full((2, 4), i - 10, np.float32)} for i in range(20)]
    every = probe_reference(model, feeds, tmp_path, seconds=3600)
    assert len(every.feeds) == 20 and every.outputs["y"].shape == (40, 4) and every.feed_s > 0
    cut = probe_reference(model, feeds, tmp_path, seconds=0.0)
    assert cut.feeds == feeds[:PROBE_FEEDS] and cut.outputs["y"].shape == (2 * PROBE_FEEDS, 4)
    assert np.array_equal(cut.outputs["y"], np.maximum(np.concatenate([f["x"] for f in cut.feeds]), 0))


def test_ranking_at_the_outputs_takes_fewer_feeds_where_the_candidates_run_long_and_none_past_that():
    assert output_ranking_feeds(38, 0.01) == OUTPUT_RANKING_SAMPLES  # a small encoder: 3 s for all 8
    assert output_ranking_feeds(48, 0.3) == OUTPUT_RANKING_SAMPLES  # 115 s
    assert output_ranking_feeds(77, 0.3) == 1  # 185 s for 8 feeds each, 23 s for one
    assert output_ranking_feeds(500, 0.3) == 0  # 150 s for one feed each: ranked in one pass instead
