"""Data-aware pruning (``reconstruct``): the same sparsity or channels, a closer output, and Conv inputs unfolded in
the weight's own order."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import prune_graphs as graphs
import pytest
from onnx import helper, numpy_helper

from optc.passes.prune import reconstruct, run
from optc.passes.prune.allocate import TOWARDS_COST
from optc.passes.prune.channel import ChannelRanking, cuts_by_cost
from optc.passes.prune.channel_groups import trace_channels
from optc.passes.prune.config import PruneConfig
from optc.passes.prune.layers import weighted_layer
from optc.passes.prune.magnitude import MAX_LAYER_SPARSITY, fitted_sparsities, layer_costs
from optc.passes.prune.reconstruct import _input_rows, layer_hessians, prune_reconstructed
from optc.passes.prune.run import _refitted_layers, run_prune


def correlated_inputs(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Features that move together (rank 4 plus a little noise), as real activations do: what reconstruction uses."""
    mixing = np.random.default_rng(99).standard_normal((4, 16)).astype(np.float32)  # one distribution per test
    return (rng.standard_normal((samples, 4)) @ mixing + 0.05 * rng.standard_normal((samples, 16))).astype(np.float32)


def mlp() -> onnx.ModelProto:
    g = graphs.TinyGraph(11)
    h = g.op("Relu", [g.op("MatMul", ["x", g.weight("w1", (16, 32))], "mm1")], "relu1")
    h = g.op("Relu", [g.op("MatMul", [h, g.weight("w2", (32, 32))], "mm2")], "relu2")
    g.op("MatMul", [h, g.weight("w3", (32, 8))], "mm3", output="y")
    return g.model({"x": ["N", 16]}, {"y": ["N", 8]})


def prune(model: onnx.ModelProto, tmp_path, calibration, **fields):
    config = PruneConfig.model_validate({"type": "prune", "method": "magnitude", "sparsity": 0.5, **fields})
    context = graphs.pass_context(tmp_path, config.method)
    if calibration is not None:
        path = tmp_path / "calibration.npz"
        np.savez(path, x=calibration)
        context = replace(context, calibration_data=path)
    return run_prune(model, config, context)


def output_error(model: onnx.ModelProto, reference: onnx.ModelProto, x: np.ndarray) -> float:
    (expected,) = graphs.run(reference, {"x": x})
    (got,) = graphs.run(model, {"x": x})
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


def test_reconstruct_keeps_the_sparsity_and_stays_closer_to_the_original_on_held_out_inputs(tmp_path):
    rng = np.random.default_rng(0)
    model = mlp()
    plain = prune(model, tmp_path, None)
    fitted = prune(model, tmp_path, correlated_inputs(rng, 256), reconstruct=True)
    held_out = correlated_inputs(rng, 64)  # same distribution, other samples
    w2 = {
        name: numpy_helper.to_array(next(t for t in m.model.graph.initializer if t.name == "w2"))
        for name, m in (("plain", plain), ("fitted", fitted))
    }
    assert np.sum(w2["fitted"] == 0) == np.sum(w2["plain"] == 0) == 512  # half of 32×32, the first/last stay dense
    assert [row["reconstructed"] for row in fitted.details["layers"]] == [True]
    assert fitted.details["reconstructed_on"].endswith("calibration.npz")
    # the remaining weights moved to make up for the zeroed ones: far closer than magnitude alone
    assert output_error(fitted.model, model, held_out) < 0.5 * output_error(plain.model, model, held_out)


def two_branches() -> onnx.ModelProto:
    """``a`` reads redundant features (rank 2 of 16), ``b`` independent ones: a cut costs ``a`` far less."""
    g = graphs.TinyGraph(12)
    g.op("MatMul", ["a", g.weight("wa", (16, 16))], "mma", output="ya")
    g.op("MatMul", ["b", g.weight("wb", (16, 16))], "mmb", output="yb")
    return g.model({"a": ["N", 16], "b": ["N", 16]}, {"ya": ["N", 16], "yb": ["N", 16]})


def branch_inputs(rng: np.random.Generator, samples: int) -> dict[str, np.ndarray]:
    mixing = np.random.default_rng(98).standard_normal((2, 16))
    redundant = rng.standard_normal((samples, 2)) @ mixing + 0.01 * rng.standard_normal((samples, 16))
    return {"a": redundant.astype(np.float32), "b": rng.standard_normal((samples, 16)).astype(np.float32)}


def test_global_reconstruct_spends_the_zeros_where_the_inputs_are_redundant(tmp_path):
    rng = np.random.default_rng(3)
    model = two_branches()
    path = tmp_path / "calibration.npz"
    np.savez(path, **branch_inputs(rng, 256))
    held_out = branch_inputs(rng, 64)
    outcomes = {}
    for scope in ("per_layer", "global"):
        config = PruneConfig.model_validate(
            {
                "type": "prune",
                "method": "magnitude",
                "sparsity": 0.5,
                "scope": scope,
                "reconstruct": True,
                "dense_first_last": False,
            }
        )
        context = replace(graphs.pass_context(tmp_path, "magnitude"), calibration_data=path)
        outcomes[scope] = run_prune(model, config, context)
    rows = {row["layer"]: row for row in outcomes["global"].details["layers"]}
    assert rows["mma"]["zeros"] + rows["mmb"]["zeros"] == 256  # the same half of all weights as per layer
    assert rows["mma"]["sparsity"] > 0.6 and rows["mmb"]["sparsity"] < 0.4
    assert all(row["reconstructed"] for row in rows.values())

    def worst_error(pruned: onnx.ModelProto) -> float:  # relative error of the output that moved most
        expected, got = graphs.run(model, held_out), graphs.run(pruned, held_out)
        return max(float(np.linalg.norm(g - e) / np.linalg.norm(e)) for g, e in zip(got, expected, strict=True))

    assert worst_error(outcomes["global"].model) < 0.7 * worst_error(outcomes["per_layer"].model)


def test_fitted_sparsities_reach_the_target_and_keep_every_layer_alive():
    """A layer whose inputs lie along one direction would give up nearly every weight; the cap leaves it 5 %."""
    rng = np.random.default_rng(4)
    model = two_branches()
    initializers = {t.name: t for t in model.graph.initializer}
    layers = {
        name: weighted_layer(next(n for n in model.graph.node if n.input[1] == name), initializers)
        for name in ("wa", "wb")
    }
    inputs = branch_inputs(rng, 256)
    one_direction = np.outer(inputs["a"][0], inputs["a"][0]).astype(np.float64)  # ``a``'s weights nearly free
    independent = (inputs["b"].T @ inputs["b"]).astype(np.float64)
    costs = layer_costs(initializers, list(layers.values()), {"wa": [one_direction], "wb": [independent]})
    sparsities = fitted_sparsities(costs, 0.6)
    cost_placed = {name: 0.6 + (s - 0.6) / TOWARDS_COST for name, s in sparsities.items()}
    assert cost_placed["wa"] == pytest.approx(MAX_LAYER_SPARSITY, abs=1 / 256)
    assert sparsities["wa"] + sparsities["wb"] == pytest.approx(1.2, abs=2 / 256)


def test_reconstruct_without_calibration_data_prunes_by_magnitude_and_says_so(tmp_path):
    outcome = prune(mlp(), tmp_path, None, reconstruct=True)
    assert [row["reconstructed"] for row in outcome.details["layers"]] == [False]
    assert "reconstructed_on" not in outcome.details
    assert any("reconstruct needs calibration data (--calibration-data)" in w for w in outcome.warnings)


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 0, 2, 1], "strides": [2, 1], "group": 2},
        {"dilations": [2, 2], "strides": [1, 2], "group": 1},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2], "group": 4},
        {"auto_pad": "SAME_LOWER", "strides": [2, 2], "group": 1},
        {"auto_pad": "VALID", "group": 4},
    ],
)
def test_conv_inputs_unfold_in_the_weight_order(attrs):
    """Each group's patch rows times that group's weight rows give ONNX Runtime's Conv output at every position."""
    rng = np.random.default_rng(1)
    group = attrs["group"]
    weight = rng.standard_normal((8, 4 // group, 3, 2)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 2], **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 4, 7, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    (expected,) = graphs.run(model, {"x": x})  # [2, 8, oh, ow]
    rows = _input_rows(x, node, weight.shape, seed=0)  # few positions: every one kept, in order
    assert len(rows) == group
    per_group = 8 // group
    for g, patches in enumerate(rows):
        got = patches @ weight[g * per_group : (g + 1) * per_group].reshape(per_group, -1).T
        want = expected[:, g * per_group : (g + 1) * per_group].reshape(2, per_group, -1).transpose(0, 2, 1)
        np.testing.assert_allclose(got, want.reshape(-1, per_group), rtol=1e-4, atol=1e-4)


def test_conv_weights_pruned_per_group_keep_their_layout(tmp_path):
    """A grouped Conv's weight comes back in its shape, each group's rows at the sparsity, closer than plain."""
    model = graphs.grouped()
    initializers = {t.name: t for t in model.graph.initializer}
    layer = weighted_layer(next(n for n in model.graph.node if n.name == "gconv"), initializers)
    x = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)
    hessians = layer_hessians(model, [layer], lambda: [{"x": x[i : i + 1]} for i in range(16)], tmp_path)
    assert [h.shape for h in hessians["gconv.w"]] == [(36, 36), (36, 36)]
    weight = numpy_helper.to_array(initializers["gconv.w"])
    pruned = prune_reconstructed(weight, layer, hessians["gconv.w"], 0.5)
    assert pruned.shape == weight.shape and pruned.dtype == weight.dtype
    for g in range(2):
        assert np.sum(pruned[2 * g : 2 * g + 2] == 0) == 36  # half of each group's 2 × 36 weights


def redundant_convs() -> onnx.ModelProto:
    """Conv (3→8) → Relu → Conv (8→4): the first Conv's filters are mixtures of three, so its channels move
    together and the ones that stay can stand in for the ones cut."""
    g = graphs.TinyGraph(12)
    h = g.op("Relu", [g.conv("x", "conv1", 3, 8)], "relu1")
    g.conv(h, "conv2", 8, 4, output="y")
    base = g.rng.standard_normal((3, 27))
    g.set("conv1.w", (g.rng.standard_normal((8, 3)) @ base + 0.05 * g.rng.standard_normal((8, 27))).reshape(8, 3, 3, 3))
    return g.model({"x": ["N", 3, 8, 8]}, {"y": ["N", 4, 8, 8]})


def redundant_mlp() -> onnx.ModelProto:
    """MatMul (16→12) → Relu → MatMul (12→8), the first layer's outputs mixtures of four."""
    g = graphs.TinyGraph(13)
    h = g.op("Relu", [g.op("MatMul", ["x", g.weight("w1", (16, 12))], "mm1")], "relu1")
    g.op("MatMul", [h, g.weight("w2", (12, 8))], "mm2", output="y")
    g.set("w1", g.rng.standard_normal((16, 4)) @ g.rng.standard_normal((4, 12)) + 0.05 * g.array("w1"))
    return g.model({"x": ["N", 16]}, {"y": ["N", 8]})


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        (redundant_convs, lambda rng, n: rng.standard_normal((n, 3, 8, 8)).astype(np.float32)),
        (redundant_mlp, correlated_inputs),
    ],
)
def test_channel_reconstruct_refits_the_next_layer_on_the_channels_kept(tmp_path, model, inputs):
    rng = np.random.default_rng(3)
    original = model()
    plain = prune(original, tmp_path, None, method="channel", sparsity=0.25)
    fitted = prune(original, tmp_path, inputs(rng, 128), method="channel", sparsity=0.25, reconstruct=True)
    assert graphs.shapes(fitted.model) == graphs.shapes(plain.model) != graphs.shapes(original)  # the same cut
    assert fitted.details["reconstructed_on"].endswith("calibration.npz")
    held_out = inputs(rng, 32)
    assert output_error(fitted.model, original, held_out) < 0.5 * output_error(plain.model, original, held_out)


def test_channels_are_ranked_by_what_they_cost_the_next_layer_not_by_weight_norm(tmp_path):
    """Three channels with the largest weights never get past the Relu: by norm they stay, by their cost to the
    next layer's output they are the first to go, and cutting them changes nothing."""
    g = graphs.TinyGraph(14)
    h = g.op("Relu", [g.op("MatMul", ["x", g.weight("w1", (16, 12))], "mm1")], "relu1")
    g.op("MatMul", [h, g.weight("w2", (12, 8))], "mm2", output="y")
    w1 = g.array("w1")
    w1[:, [2, 5, 9]] = -5 * np.abs(w1[:, [2, 5, 9]]) - 1  # positive inputs: these outputs are always negative
    g.set("w1", w1)
    model = g.model({"x": ["N", 16]}, {"y": ["N", 8]})
    rng = np.random.default_rng(5)
    positive = lambda n: np.abs(rng.standard_normal((n, 16))).astype(np.float32)  # noqa: E731
    by_norm = prune(model, tmp_path, None, method="channel", sparsity=0.25)
    by_cost = prune(model, tmp_path, positive(128), method="channel", sparsity=0.25, reconstruct=True)
    kept = numpy_helper.to_array(next(t for t in by_cost.model.graph.initializer if t.name == "w1"))
    assert kept.shape == (16, 9) and not np.any(np.all(kept < 0, axis=0))  # the three dead channels went
    held_out = positive(32)
    assert output_error(by_cost.model, model, held_out) < 1e-5 < output_error(by_norm.model, model, held_out)


def test_groups_whose_channels_cost_less_give_up_more():
    cheap = ChannelRanking(np.arange(10), np.linspace(0.0, 0.01, 9))
    dear = ChannelRanking(np.arange(10), np.linspace(1.0, 2.0, 9))
    cuts = cuts_by_cost({"cheap": cheap, "dear": dear}, 0.3)
    # by cost alone the cheap group would lose all 6 of the 20 channels: half way from 3 each
    assert cuts == {"cheap": round(3 + TOWARDS_COST * 3), "dear": round(3 - TOWARDS_COST * 3)}
    assert cuts_by_cost({"cheap": cheap, "dear": dear}, 0.0) == {"cheap": 0, "dear": 0}


def test_a_weight_read_by_two_nodes_is_refitted_to_both_inputs(tmp_path):
    """The plan cuts a shared weight through one edit; the refit must still see every node that applies it."""
    g = graphs.TinyGraph(14)
    h = g.op("Relu", [g.op("MatMul", ["x", g.weight("w1", (16, 12))], "mm1")], "relu1")
    first = g.op("MatMul", [h, g.weight("w2", (12, 8))], "read1")
    second = g.op("MatMul", [g.op("Sigmoid", [h], "squash"), "w2"], "read2")
    g.op("Add", [first, second], "sum", output="y")
    model = g.model({"x": ["N", 16]}, {"y": ["N", 8]})
    initializers = {t.name: t for t in model.graph.initializer}
    plan = trace_channels(model, {"mm1"}, set())
    assert [e.reader.node.name for e in plan.edits if e.reader is not None] == ["read1"]  # one edit for both
    assert [layer.node.name for layer in _refitted_layers(model, plan)] == ["read1", "read2"]
    x = correlated_inputs(np.random.default_rng(4), 64)
    samples = [{"x": x[i : i + 1]} for i in range(64)]
    both = layer_hessians(model, _refitted_layers(model, plan), lambda: samples, tmp_path)
    read1 = weighted_layer(next(n for n in model.graph.node if n.name == "read1"), initializers)
    one = layer_hessians(model, [read1], lambda: samples, tmp_path)
    assert not np.allclose(both["w2"][0], one["w2"][0])  # the sigmoid branch's inputs count too


def test_a_layer_feeding_a_log_is_cut_but_not_refitted(tmp_path):
    """A mel filterbank before a log: refitting it to squared error moved small outputs towards zero (cosine 0.9997
    unfitted, 0.954 fitted on a real mel front-end), so it keeps its weights on the channels that stay."""
    g = graphs.TinyGraph(16)
    spectrum = g.op(
        "Pow", [g.op("MatMul", ["x", g.weight("frames", (16, 12))], "stft"), g.const("two", np.float32(2))], "power"
    )
    mel = g.op(
        "MatMul", [spectrum, g.const("filters", np.abs(g.rng.standard_normal((12, 4))).astype(np.float32))], "mel"
    )
    g.op("Log", [g.op("Clip", [mel, g.const("floor", np.float32(1e-6))], "floor")], "log", output="y")
    model = g.model({"x": ["N", 16]}, {"y": ["N", 4]})
    plain = prune(model, tmp_path, None, method="channel", sparsity=0.25)
    fitted = prune(model, tmp_path, correlated_inputs(np.random.default_rng(5), 64), method="channel", sparsity=0.25,
                   reconstruct=True)  # fmt: skip
    assert "Log 'log'" in fitted.details["not_refitted"]["mel"]
    weights = [{t.name: numpy_helper.to_array(t) for t in o.model.graph.initializer} for o in (plain, fitted)]
    assert weights[0]["filters"].shape == (9, 4)
    np.testing.assert_array_equal(weights[0]["filters"], weights[1]["filters"])


def test_hessians_beyond_one_pass_budget_take_more_passes_with_the_same_result(tmp_path, monkeypatch):
    model = mlp()
    initializers = {t.name: t for t in model.graph.initializer}
    layers = [weighted_layer(n, initializers) for n in model.graph.node if n.op_type == "MatMul"]
    x = correlated_inputs(np.random.default_rng(6), 16)
    passes = []

    def batches():
        passes.append(1)
        return [{"x": x[i : i + 1]} for i in range(16)]

    together = layer_hessians(model, layers, batches, tmp_path)
    assert len(passes) == 1
    monkeypatch.setattr(reconstruct, "HESSIAN_BYTES", 32 * 32 * 8)  # one 32-input Hessian per pass
    apart = layer_hessians(model, layers, batches, tmp_path)
    assert len(passes) == 1 + 3
    for weight in ("w1", "w2", "w3"):
        np.testing.assert_allclose(apart[weight][0], together[weight][0])


def test_a_layer_whose_hessian_alone_is_over_the_budget_is_pruned_unfitted(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "HESSIAN_BYTES", 16 * 16 * 8)  # w2 has 32 inputs: 8 KiB of Hessian
    outcome = prune(mlp(), tmp_path, correlated_inputs(np.random.default_rng(7), 32), reconstruct=True)
    assert [row["reconstructed"] for row in outcome.details["layers"]] == [False]
    assert "input Hessian would take" in outcome.details["not_refitted"]["mm2"]
