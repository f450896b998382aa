"""Channel pruning on tiny graphs: reduced weight shapes, unchanged interfaces, and identical outputs where the removed
channels were all-zero."""

from __future__ import annotations

import numpy as np
import onnx
import prune_graphs as graphs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optc.errors import PassError
from optc.passes.prune.channel import prune_channels
from optc.passes.prune.channel_groups import trace_channels
from optc.passes.prune.config import PruneConfig
from optc.passes.prune.layers import weighted_layer
from optc.passes.prune.run import run_prune


def pruned(model: onnx.ModelProto, ratio: float = 0.5, excluded: frozenset[str] = frozenset()):
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {n.name for n in model.graph.node if weighted_layer(n, initializers) is not None} - excluded
    result = prune_channels(model, trace_channels(model, producers, set(excluded)), ratio, "l1")
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, check_type=True, strict_mode=True)
    assert [v.SerializeToString() for v in result.model.graph.input] == [
        v.SerializeToString() for v in model.graph.input
    ]
    assert [v.SerializeToString() for v in result.model.graph.output] == [
        v.SerializeToString() for v in model.graph.output
    ]
    return result


def feed(model: onnx.ModelProto, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        i.name: rng.standard_normal([batch, *[d.dim_value for d in i.type.tensor_type.shape.dim[1:]]]).astype(
            np.float32
        )
        for i in model.graph.input
    }


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    inputs = feed(before)
    for a, b in zip(graphs.run(before, inputs), graphs.run(after, inputs), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_chain_conv_bn_relu_conv_shrinks_every_tensor_that_follows_the_channels():
    model = graphs.chain()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert shapes["conv1.w"] == (4, 3, 3, 3)
    assert all(shapes[f"bn1.{p}"] == (4,) for p in ("scale", "bias", "mean", "var"))
    assert shapes["conv2.w"] == (4, 4, 3, 3)  # its inputs shrink; its outputs are the graph output and stay
    assert_same_outputs(model, result.model)  # the removed channels were exact zeros


def test_residual_add_prunes_the_coupled_layers_together():
    model = graphs.residual()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert shapes["stem.w"] == (4, 8, 3, 3)
    assert shapes["convA.w"] == (4, 4, 3, 3)
    assert shapes["convB.w"] == (4, 4, 3, 3)
    assert shapes["head.w"] == (2, 4, 3, 3)
    coupled = {row["layer"]: row["coupled_with"] for row in result.layers}
    assert coupled == {"stem": 1, "convB": 1, "convA": 0}
    graphs.run(result.model, feed(model))


def test_residual_add_with_a_graph_input_leaves_the_group_alone_and_says_why():
    model = graphs.residual(shortcut_from_input=True)
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert shapes["convB.w"] == (8, 4, 3, 3)  # convB's outputs meet x in the Add: kept, its inputs still shrink
    assert shapes["convA.w"] == (4, 8, 3, 3)
    reasons = {row["layers"]: row["reason"] for row in result.left_alone}
    assert "'x'" in reasons["convB"] and "graph output 'y'" in reasons["head"]


def test_conv_flatten_gemm_maps_each_channel_to_its_features():
    model = graphs.conv_flatten_gemm()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert shapes["conv.w"] == (3, 2, 3, 3)
    assert shapes["fc1.w"] == (5, 48)  # 3 channels × 4×4 features in; 10 → 5 features out
    assert shapes["fc2.w"] == (5, 3)
    assert_same_outputs(model, result.model)  # the zero channels were 1, 3, 5: a wrong mapping changes outputs


def test_matmul_output_features_shrink_with_their_bias():
    model = graphs.matmul_mlp()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["w1"], shapes["b1"], shapes["w2"]) == ((6, 4), (4,), (4, 3))
    graphs.run(result.model, feed(model))


def test_depthwise_conv_passes_the_channels_through_and_updates_its_group():
    model = graphs.depthwise()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["conv1.w"], shapes["dw.w"], shapes["pw.w"]) == ((4, 3, 3, 3), (4, 1, 3, 3), (4, 4, 1, 1))
    dw = next(n for n in result.model.graph.node if n.name == "dw")
    assert onnx.helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 4
    graphs.run(result.model, feed(model))


def test_grouped_conv_input_is_left_alone():
    model = graphs.grouped()
    result = pruned(model)
    assert graphs.shapes(result.model) == graphs.shapes(model)
    reasons = {row["layers"]: row["reason"] for row in result.left_alone}
    assert "grouped Conv gconv" in reasons["conv1"]


def test_concat_removes_each_branch_channels_at_its_offset():
    model = graphs.concat()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["convA.w"], shapes["convB.w"], shapes["out.w"]) == ((2, 3, 3, 3), (3, 3, 3, 3), (2, 5, 3, 3))
    assert_same_outputs(model, result.model)


def test_excluded_layer_keeps_its_channels_and_blocks_what_feeds_it():
    model = graphs.chain()
    result = pruned(model, excluded=frozenset({"conv2"}))
    assert graphs.shapes(result.model) == graphs.shapes(model)
    reasons = {row["layers"]: row["reason"] for row in result.left_alone}
    assert reasons == {"conv1": "Conv conv2 is excluded"}


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9])
def test_ratio_sets_the_channels_kept_and_at_least_one_stays(ratio):
    result = pruned(graphs.chain(), ratio)
    assert graphs.shapes(result.model)["conv1.w"][0] == max(8 - round(ratio * 8), 1)


def test_pass_with_nothing_prunable_fails_naming_the_block_and_the_reasons(tmp_path):
    config = PruneConfig(type="prune", method="channel", sparsity=0.5)
    with pytest.raises(PassError, match=r"passes\[0\] prune \(channel\): no channel group can be pruned: .*grouped"):
        run_prune(graphs.grouped(), config, graphs.pass_context(tmp_path, "channel"))


@pytest.mark.parametrize(
    ("middle", "attrs"),
    [
        ("Resize", {"mode": "nearest"}),
        ("Pad", {}),
        ("Slice", {}),
        ("Softmax", {"axis": -1}),
        ("LogSoftmax", {"axis": 2}),
        ("ReduceMean", {"axes": [2, 3]}),
        ("Transpose", {"perm": [0, 1, 3, 2]}),
    ],
)
def test_ops_on_the_other_axes_pass_the_channels_on(middle, attrs):
    model = graphs.channels_through(middle, **attrs)
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["conv1.w"], shapes["conv2.w"]) == ((4, 3, 3, 3), (4, 4, 1, 1))
    assert_same_outputs(model, result.model)  # the removed channels had zero weights in conv2


@pytest.mark.parametrize(
    ("middle", "attrs", "reason"),
    [
        ("Softmax", {"axis": 1}, "Softmax middle normalises over the channels"),
        ("ReduceMean", {"axes": [1]}, "ReduceMean middle reduces over the channels"),
        ("ReduceMean", {}, "ReduceMean middle reduces over the channels"),
    ],
)
def test_ops_across_the_channels_block_them_and_say_so(middle, attrs, reason):
    result = pruned(graphs.channels_through(middle, **attrs))
    assert graphs.shapes(result.model)["conv1.w"] == (8, 3, 3, 3)
    assert {row["layers"]: row["reason"] for row in result.left_alone}["conv1"] == reason


def test_a_reduction_that_drops_the_spatial_axes_moves_the_channels_to_the_last_axis():
    model = graphs.reduce_then_gemm([2, 3])
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["conv.w"], shapes["fc.w"]) == ((4, 3, 3, 3), (4, 4))
    assert_same_outputs(model, result.model)


def test_channels_last_transpose_feeds_a_matmul_over_the_channels():
    model = graphs.transpose_then_matmul()
    result = pruned(model)
    assert graphs.shapes(result.model)["w"] == (4, 5)
    assert_same_outputs(model, result.model)


def test_conv1d_written_as_unsqueeze_conv_squeeze_is_pruned():
    model = graphs.conv1d_as_conv2d()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["c1.w"], shapes["c2.w"]) == ((4, 3, 1, 3), (4, 4, 1, 3))
    assert_same_outputs(model, result.model)


def test_conv_transpose_input_channels_shrink_with_the_conv_before_it():
    model = graphs.conv_transpose()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["conv.w"], shapes["up.w"]) == ((4, 3, 3, 3), (4, 4, 2, 2))
    assert_same_outputs(model, result.model)


def test_a_weight_shared_by_time_steps_shrinks_once_for_all_of_them():
    model = graphs.unrolled_steps()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["w"], shapes["w2"]) == ((6, 4), (4, 3))
    assert_same_outputs(model, result.model)


def test_a_weight_shared_with_a_step_that_reaches_an_output_is_left_alone_for_every_step():
    result = pruned(graphs.unrolled_steps(second_step_is_output=True))
    assert graphs.shapes(result.model)["w"] == (6, 8)
    reasons = {row["layers"]: row["reason"] for row in result.left_alone}
    assert reasons["step1, step2"] == "reaches graph output 'h2'"


def test_two_branches_through_one_weight_keep_the_same_channels():
    model = graphs.siamese()
    result = pruned(model)
    shapes = graphs.shapes(result.model)
    assert (shapes["conv.w"], shapes["conv.b"], shapes["head.w"]) == ((4, 3, 3, 3), (4,), (4, 8, 1, 1))
    assert_same_outputs(model, result.model)


@pytest.mark.parametrize("shared_target", [False, True])
def test_a_reshape_that_keeps_the_channel_axis_whole_gets_the_new_count(tmp_path, shared_target):
    model = graphs.reshaped_steps(shared_target)
    config = PruneConfig(type="prune", method="channel", sparsity=0.5)
    outcome = run_prune(model, config, graphs.pass_context(tmp_path, "channel"))
    shapes = graphs.shapes(outcome.model)
    assert (shapes["w_a"], shapes["w_b"], shapes["head_a"], shapes["head_b"]) == ((6, 4), (6, 4), (4, 2), (4, 2))
    targets = [onnx.numpy_helper.to_array(t).tolist() for t in outcome.model.graph.initializer if "target" in t.name]
    assert targets and all(t == [-1, 4] for t in targets)
    assert_same_outputs(model, outcome.model)  # each branch lost its own zero features


def old_style_export(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model as old exporters write it: no node names, a weight in a Constant node, and the other
    initializers also listed as graph inputs (with their shapes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        node.name = ""
    weight = next(t for t in out.graph.initializer if t.name == "conv1.w")
    out.graph.node.insert(0, onnx.helper.make_node("Constant", [], ["conv1.w"], value=weight))
    out.graph.initializer.remove(weight)
    out.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in out.graph.initializer
    )
    return out


def test_the_pass_prunes_models_with_unnamed_nodes_constant_weights_and_initializers_as_inputs(tmp_path):
    original = graphs.chain()
    model = old_style_export(original)
    config = PruneConfig(type="prune", method="channel", sparsity=0.5)
    outcome = run_prune(model, config, graphs.pass_context(tmp_path, "channel"))
    shapes = graphs.shapes(outcome.model)
    assert (shapes["conv1.w"], shapes["conv2.w"]) == ((4, 3, 3, 3), (4, 4, 3, 3))
    assert [i.name for i in outcome.model.graph.input] == ["x"]  # the declared weight shapes would contradict
    assert_same_outputs(original, outcome.model)


# Ops on an [N, 8, H, W] tensor that keep its rank and leave the channels on axis 1; the last one reaches across them.
CHANNEL_WISE_STEPS = {
    "relu": lambda g, h, i: g.op("Relu", [h], f"relu{i}"),
    "softmax_w": lambda g, h, i: g.op("Softmax", [h], f"softmax{i}", axis=3),
    "mean_w": lambda g, h, i: g.op("ReduceMean", [h], f"mean{i}", axes=[3], keepdims=1),
    "pad_h": lambda g, h, i: g.op(
        "Pad", [h, g.const(f"pads{i}", np.array([0, 0, 1, 0, 0, 0, 1, 0], np.int64))], f"pad{i}"
    ),
    "slice_w": lambda g, h, i: g.op(
        "Slice",
        [h, *(g.const(f"{k}{i}", np.array([v], np.int64)) for k, v in (("s", 0), ("e", 2), ("a", 3)))],
        f"slice{i}",
    ),
    "resize": lambda g, h, i: g.op(
        "Resize", [h, "", g.const(f"scales{i}", np.array([1, 1, 2, 1], np.float32))], f"resize{i}", mode="nearest"
    ),
    "swap_hw": lambda g, h, i: g.op("Transpose", [h], f"swap{i}", perm=[0, 1, 3, 2]),
    "unsqueeze_squeeze": lambda g, h, i: g.op(
        "Squeeze",
        [g.op("Unsqueeze", [h, g.const(f"ax{i}", np.array([2], np.int64))], f"unsq{i}"), f"ax{i}"],
        f"sq{i}",
    ),
    "mean_w_dropped": lambda g, h, i: g.op(
        "Unsqueeze",
        [g.op("ReduceMean", [h], f"mean_drop{i}", axes=[3], keepdims=0), g.const(f"back{i}", np.array([3], np.int64))],
        f"unsq_back{i}",
    ),
    "nhwc_and_back": lambda g, h, i: g.op(
        "Transpose", [g.op("Transpose", [h], f"nhwc{i}", perm=[0, 2, 3, 1])], f"nchw{i}", perm=[0, 3, 1, 2]
    ),
    "scale": lambda g, h, i: g.op("Mul", [h, g.weight(f"scale{i}", (1, 8, 1, 1))], f"mul{i}"),
    "residual": lambda g, h, i: g.op("Add", [h, h], f"twice{i}"),
    "concat_w": lambda g, h, i: g.op("Concat", [h, h], f"cat{i}", axis=3),
    "softmax_c": lambda g, h, i: g.op("Softmax", [h], f"softmax_c{i}", axis=1),
}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(sorted(CHANNEL_WISE_STEPS)), min_size=1, max_size=4))
def test_any_chain_of_channel_wise_ops_is_pruned_exactly_or_left_alone_with_a_reason(steps):
    g = graphs.TinyGraph(16)
    h = g.conv("x", "conv1", 3, 8)
    for index, step in enumerate(steps):
        h = CHANNEL_WISE_STEPS[step](g, h, index)
    g.op("Conv", [h, g.weight("conv2.w", (4, 8, 1, 1))], "conv2", output="y", kernel_shape=[1, 1])
    for name, axis in (("conv1.w", 0), ("conv1.b", 0), ("conv2.w", 1)):
        g.zero_channels(name, [4, 5, 6, 7], axis)
    model = g.model({"x": ["N", 3, 6, 6]}, {"y": ["N", 4, None, None]})
    result = pruned(model)
    kept = graphs.shapes(result.model)["conv1.w"][0]
    reasons = {row["layers"]: row["reason"] for row in result.left_alone}
    assert kept == (8 if "softmax_c" in steps else 4), reasons
    assert kept == 4 or "normalises over the channels" in reasons["conv1"]
    assert_same_outputs(model, result.model)


def test_a_conv_split_in_parts_becomes_one_layer_per_part_and_each_is_pruned(tmp_path):
    model = graphs.conv_silu_split()
    config = PruneConfig(type="prune", method="channel", sparsity=0.5)
    outcome = run_prune(model, config, graphs.pass_context(tmp_path, "channel"))
    shapes = graphs.shapes(outcome.model)
    assert (shapes["conv.w__part0"], shapes["conv.w__part1"]) == ((2, 3, 3, 3), (2, 3, 3, 3))
    assert (shapes["head0.w"], shapes["head1.w"]) == ((2, 2, 1, 1), (2, 2, 1, 1))
    assert "Split" not in {n.op_type for n in outcome.model.graph.node}
    assert_same_outputs(model, outcome.model)  # each part lost its own zero channels


def test_a_split_conv_whose_output_is_read_elsewhere_stays_whole(tmp_path):
    model = graphs.conv_silu_split(conv_output_read_elsewhere=True)
    config = PruneConfig(type="prune", method="channel", sparsity=0.5)
    with pytest.raises(PassError, match="no channel group can be pruned: feeds Split split"):
        run_prune(model, config, graphs.pass_context(tmp_path, "channel"))
