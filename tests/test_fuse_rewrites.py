"""Each generic rewrite on a tiny graph holding its pattern: the graph changes as expected and outputs do not; and
graphs where the rewrite must not apply stay untouched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optc.passes.fuse.driver import rewrites, simplify
from optc.passes.fuse.rewrites.drop_empty_concat_inputs import drop_empty_concat_inputs
from optc.passes.fuse.rewrites.drop_identity import drop_identity
from optc.passes.fuse.rewrites.drop_noops import drop_noops
from optc.passes.fuse.rewrites.drop_unused import drop_unused
from optc.passes.fuse.rewrites.fold_batchnorm import fold_batchnorm
from optc.passes.fuse.rewrites.fold_constants import fold_constants
from optc.passes.fuse.rewrites.fold_scale_bias import fold_scale_bias
from optc.passes.fuse.rewrites.fold_shape_dims import fold_shape_dims
from optc.passes.fuse.rewrites.matmul_add_to_gemm import matmul_add_to_gemm
from optc.passes.fuse.rewrites.merge_constants import merge_constants
from optc.passes.fuse.rewrites.merge_duplicates import merge_duplicates
from optc.passes.fuse.rewrites.merge_reshapes import merge_reshapes
from optc.passes.fuse.rewrites.merge_slices import merge_slices
from optc.passes.fuse.rewrites.merge_transposes import merge_transposes
from optc.passes.quantize_stored_weights import store_weights_int8
from tests.conftest import SAMPLES, make_model
from tests.fuse_graphs import (
    assert_same_outputs,
    conv_bn,
    conv_scale_bias,
    conv_transpose_bn,
    gemm_bn,
    init,
    matmul_add,
    ops,
    rand,
    tensor,
)


def test_fold_batchnorm_keeps_outputs():
    model = conv_bn()
    fused, applied = fold_batchnorm(model)
    assert applied == 1 and ops(fused) == {"Conv": 1}
    assert_same_outputs(model, fused, {"x": rand(2, 3, 5, 5)})


def test_folded_conv_writes_the_batchnorm_output_name():
    """Tensors keep the names the original graph gave their values, so per-tensor comparisons line up."""
    model = onnx.load_model(str(SAMPLES / "digits_cnn.onnx"))
    bn_outputs = {n.name: n.output[0] for n in model.graph.node if n.op_type == "BatchNormalization"}
    fused, applied = fold_batchnorm(model)
    conv_outputs = {n.name: n.output[0] for n in fused.graph.node if n.op_type == "Conv"}
    assert applied == 3
    assert sorted(conv_outputs.values()) == sorted(bn_outputs.values())


def test_fold_batchnorm_into_grouped_conv_transpose_without_bias():
    model = conv_transpose_bn()
    fused, applied = fold_batchnorm(model)
    assert applied == 1 and ops(fused) == {"ConvTranspose": 1}
    assert len(fused.graph.node[0].input) == 3  # the fold gave it a bias
    assert_same_outputs(model, fused, {"x": rand(1, 4, 3, 3)})


def test_fold_batchnorm_into_gemm_with_alpha_beta():
    model = gemm_bn()
    fused, applied = fold_batchnorm(model)
    assert applied == 1 and ops(fused) == {"Gemm": 1}
    assert_same_outputs(model, fused, {"x": rand(3, 8)})


def test_fold_batchnorm_leaves_a_conv_output_with_a_second_reader():
    model = conv_bn(second_reader=True)
    fused, applied = fold_batchnorm(model)
    assert applied == 0 and ops(fused) == {"Conv": 1, "BatchNormalization": 1}


def test_matmul_add_becomes_gemm_for_2d_input():
    model = matmul_add(rank=2)
    fused, applied = matmul_add_to_gemm(model)
    assert applied == 1 and ops(fused) == {"Gemm": 1}
    assert fused.graph.node[0].name == "proj"  # keeps the MatMul's name for later exclusions
    assert_same_outputs(model, fused, {"x": rand(4, 8)})


def test_matmul_add_with_3d_input_is_left_alone():
    fused, applied = matmul_add_to_gemm(matmul_add(rank=3))
    assert applied == 0 and ops(fused) == {"MatMul": 1, "Add": 1}


def test_fold_scale_bias_into_conv():
    model = conv_scale_bias(scale_shape=(1, 4, 1, 1))
    fused, counts = simplify(model)
    assert counts["fold_scale_bias"] == 2 and ops(fused) == {"Conv": 1}
    assert_same_outputs(model, fused, {"x": rand(1, 3, 4, 4)})


def test_fold_scale_bias_refuses_a_constant_that_varies_spatially():
    model = conv_scale_bias(scale_shape=(1, 1, 4, 4))
    fused, applied = fold_scale_bias(model)
    assert applied == 0  # the Mul cannot fold, so the Sub after it has no Conv to fold into either
    assert ops(fused) == {"Conv": 1, "Mul": 1, "Sub": 1}


def test_fold_constants_folds_constant_nodes_weight_transposes_and_static_shapes():
    nodes = [
        helper.make_node("Constant", [], ["wt"], value=init("wt_value", rand(6, 8))),
        helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Shape", ["m"], ["s"]),
        helper.make_node("Reshape", ["m", "s"], ["y"]),
    ]
    model = make_model(nodes, [tensor("x", [4, 8])], [tensor("y", [4, 6])])
    fused, applied = fold_constants(model)
    assert applied == 3 and ops(fused) == {"MatMul": 1, "Reshape": 1}
    assert_same_outputs(model, fused, {"x": rand(4, 8)})


def test_fold_constants_leaves_a_weight_stored_in_int8():
    """Dynamic int8 stores Conv weights as int8 → Cast → Mul for ONNX Runtime to fold at load; a fuse pass after it
    folding them here would write the float weight back, 4x the bytes."""
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    model = make_model([conv], [tensor("x", [1, 4, 5, 5])], [tensor("y", [1, 4, 5, 5])], [init("w", rand(4, 4, 3, 3))])
    stored = store_weights_int8(model, {"conv"})
    fused, applied = fold_constants(stored)
    assert applied == 0 and ops(fused) == {"Cast": 1, "Mul": 1, "Conv": 1}


def test_fold_constants_leaves_a_symbolic_shape():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])]
    model = make_model(nodes, [tensor("x", ["batch", 8])], [tensor("y", ["batch", 8])])
    _, applied = fold_constants(model)
    assert applied == 0


def test_drop_identity_and_dropout_keep_the_output_name():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Dropout", ["r"], ["d"], name="dropout"),
        helper.make_node("Identity", ["d"], ["y"], name="identity"),
    ]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])])
    fused, counts = simplify(model)
    assert counts["drop_identity"] == 2 and ops(fused) == {"Relu": 1}
    assert fused.graph.node[0].output[0] == "y"
    assert_same_outputs(model, fused, {"x": rand(2, 3)})


def test_identity_from_input_to_output_stays():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [tensor("x", [2])], [tensor("y", [2])])
    _, applied = drop_identity(model)
    assert applied == 0


def test_drop_noops_removes_identity_transpose_same_type_cast_and_same_shape_reshape():
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 2]),
        helper.make_node("Cast", ["t"], ["c"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor("x", ["batch", 4, 6])],
        [tensor("y", ["batch", 4, 6])],
        [init("shape", np.array([0, 4, -1], np.int64))],
    )
    fused, counts = simplify(model)  # one per chain per sweep: each removal changes what the next one reads
    assert counts["drop_noops"] == 3 and ops(fused) == {"Relu": 1}
    assert_same_outputs(model, fused, {"x": rand(3, 4, 6)})


def test_drop_noops_keeps_a_reshape_that_changes_the_shape():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    model = make_model(nodes, [tensor("x", [2, 6])], [tensor("y", [3, 4])], [init("shape", np.array([3, 4]))])
    _, applied = drop_noops(model)
    assert applied == 0


def test_merge_transposes_composes_a_chain():
    nodes = [
        helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["a"], ["b"], perm=[0, 1, 3, 2]),
        helper.make_node("Transpose", ["b"], ["c"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 1, 3]),
    ]
    model = make_model(nodes, [tensor("x", [1, 2, 3, 4])], [tensor("y", [1, 3, 4, 2])])
    fused, counts = simplify(model)
    assert counts["merge_transposes"] == 2 and ops(fused) == {"Transpose": 1}  # the last two cancel outright
    assert_same_outputs(model, fused, {"x": rand(1, 2, 3, 4)})


def test_merge_transposes_removes_a_pair_that_cancels():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Transpose", ["r"], ["a"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["a"], ["y"], perm=[0, 3, 1, 2]),
    ]
    model = make_model(nodes, [tensor("x", [1, 2, 3, 4])], [tensor("y", [1, 2, 3, 4])])
    fused, applied = merge_transposes(model)
    assert applied == 1 and ops(fused) == {"Relu": 1}
    assert_same_outputs(model, fused, {"x": rand(1, 2, 3, 4)})


def test_merge_reshapes_collapses_reshape_chains_and_unsqueezes():
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Reshape", ["f", "shape"], ["r"]),
        helper.make_node("Unsqueeze", ["r", "axis1"], ["u1"]),
        helper.make_node("Unsqueeze", ["u1", "axis_last"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor("x", [2, 3, 4])],
        [tensor("y", [2, 1, 12, 1])],
        [init("shape", np.array([2, -1], np.int64)), init("axis1", np.array([1])), init("axis_last", np.array([-1]))],
    )
    fused, applied = merge_reshapes(model)
    assert applied == 2 and ops(fused) == {"Reshape": 1, "Unsqueeze": 1}
    assert_same_outputs(model, fused, {"x": rand(2, 3, 4)})


def test_merge_reshapes_keeps_a_reshape_that_copies_dims():
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["r"]),
        helper.make_node("Reshape", ["r", "copy"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor("x", [2, 3, 4])],
        [tensor("y", [6, 4])],
        [init("flat", np.array([6, 4], np.int64)), init("copy", np.array([0, 4], np.int64))],
    )
    _, applied = merge_reshapes(model)
    assert applied == 0


def test_drop_unused_removes_dead_nodes_and_initializers_but_not_inputs():
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["dead"])]
    model = make_model(
        nodes, [tensor("x", [2]), tensor("unused_input", [2])], [tensor("y", [2])], [init("stale", rand(3))]
    )
    fused, applied = drop_unused(model)
    assert applied == 2 and ops(fused) == {"Relu": 1} and not fused.graph.initializer
    assert [i.name for i in fused.graph.input] == ["x", "unused_input"]


def head_split(batch_sized_output: bool = True) -> onnx.ModelProto:
    """x[batch, seq, 8] → Reshape to [batch, seq, 2, 4] with the target computed from Shape(x), as PyTorch exports."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"]),
        helper.make_node("Gather", ["shape", "two"], ["hidden"]),
        helper.make_node("Unsqueeze", ["batch", "axis"], ["batch1"]),
        helper.make_node("Unsqueeze", ["seq", "axis"], ["seq1"]),
        helper.make_node("Concat", ["batch1", "seq1", "heads", "head_dim"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["split"], name="split"),
        helper.make_node("Mul", ["split", "hidden_f"], ["y"]),
        helper.make_node("Cast", ["hidden"], ["hidden_f"], to=TensorProto.FLOAT),
    ]
    nodes = nodes[:-2] + [nodes[-1], nodes[-2]]
    consts = {"zero": 0, "one": 1, "two": 2, "axis": [0], "heads": [2], "head_dim": [4]}
    return make_model(
        nodes,
        [tensor("x", ["batch", "seq", 8])],
        [tensor("y", ["batch", "seq", 2, 4])],
        [init(k, np.asarray(v, np.int64)) for k, v in consts.items()],
    )


def test_fold_shape_dims_turns_known_dims_into_constants_and_leaves_symbolic_ones():
    model = head_split()
    fused, applied = fold_shape_dims(model)
    assert applied == 1  # Gather(Shape(x), 2) is 8; dims 0 and 1 are batch and seq, unknown
    assert ops(fused)["Gather"] == 2
    assert_same_outputs(model, fused, {"x": rand(3, 5, 8)})


def test_constant_reshape_targets_copy_symbolic_dims_and_let_the_shape_chain_fall_away():
    model = head_split()
    fused, counts = simplify(model)
    assert counts["constant_reshape_targets"] == 1
    split = next(n for n in fused.graph.node if n.op_type == "Reshape")
    target = next(t for t in fused.graph.initializer if t.name == split.input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [0, 0, 2, 4]
    assert "Shape" not in ops(fused) and "Concat" not in ops(fused)
    for batch, seq in ((1, 7), (3, 2)):  # any sizes: the constant target copies them
        assert_same_outputs(model, fused, {"x": rand(batch, seq, 8)})


def test_an_allowzero_reshape_gets_minus_one_for_its_symbolic_dim_never_a_copy():
    """PyTorch's dynamo exporter writes ``view(x, [batch, 512])`` as Concat(Shape(input)[0:1], [512]) with allowzero:
    a 0 there would mean a zero-sized dim, so the batch dim becomes -1 (a ResNet-18 malware classifier)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], start=0, end=1),
        helper.make_node("Concat", ["s", "width"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], allowzero=1),
    ]
    model = make_model(
        nodes,
        [tensor("x", ["batch", 8, 1, 1])],
        [tensor("y", ["batch", 8])],
        [init("width", np.array([8], np.int64))],
        opset=18,
    )
    fused, counts = simplify(model)
    assert counts["constant_reshape_targets"] == 1 and ops(fused) == {"Reshape": 1}
    target = fused.graph.initializer[0]
    assert onnx.numpy_helper.to_array(target).tolist() == [-1, 8]
    for batch in (1, 3):
        assert_same_outputs(model, fused, {"x": rand(batch, 8, 1, 1)})


def focus_stem(axes_second: int) -> onnx.ModelProto:
    """Every second row, then every second column, twice over: YOLOX's Focus (a captcha detector in the corpus)."""
    big = np.array([2**62], np.int64)
    nodes = [
        helper.make_node("Slice", ["x", "zero", "big", "rows", "two"], ["r"]),
        helper.make_node("Slice", ["r", "zero", "big", "cols", "two"], ["a"]),
        helper.make_node("Slice", ["r", "one", "big", "cols", "two"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["y"], axis=1),
    ]
    return make_model(
        nodes,
        [tensor("x", ["batch", 3, 8, 8])],
        [tensor("y", ["batch", 6, 4, 4] if axes_second == 3 else ["batch", 6, 2, 8])],
        [
            init("zero", np.array([0], np.int64)),
            init("one", np.array([1], np.int64)),
            init("big", big),
            init("rows", np.array([2], np.int64)),
            init("cols", np.array([axes_second], np.int64)),
            init("two", np.array([2], np.int64)),
        ],
    )


def test_merge_slices_takes_rows_and_columns_in_one_slice():
    model = focus_stem(3)
    fused, counts = simplify(model)
    assert counts["merge_slices"] == 1 and ops(fused) == {"Slice": 2, "Concat": 1}
    assert all(n.input[0] == "x" for n in fused.graph.node if n.op_type == "Slice")
    assert_same_outputs(model, fused, {"x": rand(2, 3, 8, 8)})


def test_merge_slices_leaves_slices_along_the_same_axis():
    _, applied = merge_slices(focus_stem(2))
    assert applied == 0


def empty_concat_model() -> onnx.ModelProto:
    """``cat([x, zeros(batch, 0, 1)])`` from a PyTorch EEG model: seven nodes that append nothing."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axes"], ["b1"]),
        helper.make_node("Concat", ["b1", "zero_1d", "one_1d"], ["dims"], axis=0),
        helper.make_node("ConstantOfShape", ["dims"], ["empty"]),
        helper.make_node("Concat", ["x", "empty"], ["y"], axis=1),
    ]
    model = make_model(
        nodes,
        [tensor("x", ["batch", 5, 1])],
        [tensor("y", ["batch", 5, 1])],
        [
            init("zero", np.array(0, np.int64)),
            init("axes", np.array([0], np.int64)),
            init("zero_1d", np.array([0], np.int64)),
            init("one_1d", np.array([1], np.int64)),
        ],
    )
    return model


def test_a_concat_of_an_empty_tensor_goes_with_the_chain_that_built_it():
    model = empty_concat_model()
    fused, counts = simplify(model)
    assert counts["drop_empty_concat_inputs"] == 1 and ops(fused) == {"Concat": 1}  # of x alone: y is an output
    assert_same_outputs(model, fused, {"x": rand(2, 5, 1)})


def test_empty_inputs_and_folded_types_need_no_symbolic_shape_inference(monkeypatch):
    """ONNX Runtime's symbolic inference took 40 s a call on PP-OCRv4's text detector (sympy expressions of its
    Resizes' sizes), asked three times for empty Concat inputs and once for the types of folded constants, 165 of
    fuse's 176 s; zero dims and element types are onnx's own inference's to give."""
    calls = []
    monkeypatch.setattr(
        "optc.passes.fuse.graph.SymbolicShapeInference.infer_shapes", lambda *a, **k: calls.append(a) or None
    )
    _, dropped = drop_empty_concat_inputs(empty_concat_model())
    scaled = make_model(
        [
            helper.make_node("Cast", ["two"], ["two_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "two_f"], ["y"]),
        ],
        [tensor("x", ["batch", 5])],
        [tensor("y", ["batch", 5])],
        [init("two", np.array([2], np.int64))],
    )
    _, folded = fold_constants(scaled)
    assert dropped == 1 and folded == 1 and calls == []


def test_constants_inside_an_if_branch_become_its_initializers():
    """A wake-word model's verifier runs in an If branch holding Constant nodes that every call executed."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=two), helper.make_node("Mul", ["x", "c"], ["doubled"])],
        "then",
        [],
        [tensor("doubled", ["batch", 3])],
    )
    same = helper.make_node("Identity", ["x"], ["same"])
    other = helper.make_graph([same], "else", [], [tensor("same", ["batch", 3])])
    model = make_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)],
        [tensor("x", ["batch", 3]), tensor("flag", [], TensorProto.BOOL)],
        [tensor("y", ["batch", 3])],
    )
    fused, counts = simplify(model)
    assert counts["subgraph_constants"] == 1
    body = next(a.g for a in fused.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in body.node] == ["Mul"] and [t.name for t in body.initializer] == ["c"]
    for flag in (True, False):
        assert_same_outputs(model, fused, {"x": rand(2, 3), "flag": np.array(flag)})


def test_the_rewrites_reach_into_if_branches():
    """Silero VAD keeps 230 of its 325 nodes in If branches (PyTorch's LSTM state handling): fuse left them as
    exported, 153 nodes where onnxslim leaves 73. The branch's shape arithmetic on an outer tensor of known shape
    folds, and its Identity goes; what it reads from outside stays an input, never a constant."""
    width = helper.make_tensor("one", TensorProto.INT64, [1], [1])
    branch = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "one"], ["width"], axis=0),
            helper.make_node("Cast", ["width"], ["width_f"], to=TensorProto.FLOAT),
            helper.make_node("Identity", ["x"], ["x_again"]),
            helper.make_node("Mul", ["x_again", "width_f"], ["scaled"]),
        ],
        "then",
        [],
        [tensor("scaled", [2, 3])],
        [width],
    )
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["negated"])], "else", [], [tensor("negated", [2, 3])])
    model = make_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)],
        [tensor("x", [2, 3]), tensor("flag", [], TensorProto.BOOL)],
        [tensor("y", [2, 3])],
    )
    fused, counts = simplify(model)
    assert counts["simplify_subgraphs"] >= 2
    body = next(a.g for a in fused.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in body.node] == ["Mul"] and list(body.node[0].input)[0] == "x"
    for flag in (True, False):
        assert_same_outputs(model, fused, {"x": rand(2, 3), "flag": np.array(flag)})


def test_an_if_whose_condition_folds_to_a_constant_becomes_the_branch_it_takes():
    """PyTorch exports an LSTM with optional state as an If on whether the state has a known size, constant once the
    shapes are known; onnxslim inlines it, and so does fuse now."""
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "then", [], [tensor("r", [2, 3])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["n"])], "else", [], [tensor("n", [2, 3])])
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Size", ["shape"], ["rank"]),
        helper.make_node("Equal", ["rank", "two"], ["is_matrix"]),
        helper.make_node("If", ["is_matrix"], ["y"], then_branch=branch, else_branch=other),
    ]
    two = helper.make_tensor("two", TensorProto.INT64, [], [2])
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])], [two])
    fused, counts = simplify(model)
    assert counts["inline_constant_if"] == 1 and ops(fused) == {"Relu": 1}
    assert_same_outputs(model, fused, {"x": rand(2, 3)})


def test_a_paddle_flatten_gets_a_constant_target_when_inference_knows_no_shapes():
    """PP-OCR's line classifier (paddle2onnx) flattens [N, 200, 1, 1] with Reshape(x, Concat(Cast(Slice(Cast(
    Shape(x)), 0, 1)), [-1])) under an input whose batch is written dim_value -1, so shape inference gives the Reshape
    no shape: fuse left the chain (185 nodes where onnxslim leaves 179). The chain itself says [0, -1]."""
    i64, i32 = TensorProto.INT64, TensorProto.INT32
    consts = {"zero": [0], "one": [1], "rest": [-1]}
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape32"], to=i32),
        helper.make_node("Slice", ["shape32", "zero", "one", "zero", "one"], ["batch32"]),
        helper.make_node("Cast", ["batch32"], ["batch"], to=i64),
        helper.make_node("Concat", ["batch", "rest"], ["target"], axis=-1),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    unknown_batch = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 8, 1, 1])
    model = make_model(
        nodes,
        [unknown_batch],
        [tensor("y", [None, 8])],
        [helper.make_tensor(k, i64, [1], v) for k, v in consts.items()],
    )
    fused, counts = simplify(model)
    assert counts["constant_reshape_targets"] == 1 and ops(fused) == {"Reshape": 1, "Relu": 1}
    assert_same_outputs(model, fused, {"x": rand(3, 8, 1, 1)})


def test_merge_duplicates_computes_repeated_nodes_once_and_keeps_outputs():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu_a"),
        helper.make_node("Relu", ["x"], ["b"], name="relu_b"),
        helper.make_node("Add", ["a", "b"], ["y"]),
        helper.make_node("Relu", ["x"], ["z"], name="relu_out"),  # a graph output: stays
    ]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3]), tensor("z", [2, 3])])
    fused, applied = merge_duplicates(model)
    assert applied == 1 and ops(fused)["Relu"] == 2
    assert next(n for n in fused.graph.node if n.op_type == "Add").input[:] == ["a", "a"]
    assert_same_outputs(model, fused, {"x": rand(2, 3)})


def test_every_rewrite_is_registered_in_run_order():
    assert list(rewrites()) == [
        "constant_weight_inputs",
        "fold_constants",
        "subgraph_constants",
        "simplify_subgraphs",
        "inline_constant_if",
        "fold_shape_dims",
        "merge_constants",
        "merge_duplicates",
        "constant_reshape_targets",
        "drop_identity",
        "drop_noops",
        "drop_empty_concat_inputs",
        "merge_transposes",
        "merge_reshapes",
        "merge_slices",
        "fold_batchnorm",
        "fold_scale_bias",
        "matmul_add_to_gemm",
        "drop_unused",
    ]


def test_drop_noops_removes_arithmetic_with_a_neutral_constant_on_either_side():
    """Real exports leave ``1.0 * layer_norm`` (a molecular encoder) and ``x - 0`` (a mel front-end) behind."""
    nodes = [
        helper.make_node("Mul", ["one", "x"], ["a"]),
        helper.make_node("Sub", ["a", "zero"], ["b"]),
        helper.make_node("Div", ["b", "one_1d"], ["c"]),
        helper.make_node("Add", ["zero", "c"], ["d"]),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    model = make_model(
        nodes,
        [tensor("x", ["batch", 4])],
        [tensor("y", ["batch", 4])],
        [
            init("one", np.array(1.0, np.float32)),
            init("zero", np.array(0.0, np.float32)),
            init("one_1d", np.array([1.0], np.float32)),
        ],
    )
    fused, counts = simplify(model)
    assert counts["drop_noops"] == 4 and ops(fused) == {"Relu": 1}
    assert_same_outputs(model, fused, {"x": rand(3, 4)})


@pytest.mark.parametrize(
    ("op", "constant_first", "value", "shape"),
    [
        ("Sub", True, 0.0, []),  # 0 - x is -x
        ("Div", True, 1.0, []),  # 1 / x is not x
        ("Add", False, 0.5, []),
        ("Mul", False, 1.0, [1, 1, 1]),  # broadcasts x [batch, 4] up to rank 3
        ("Mul", False, 1.0, [2]),  # two elements
    ],
)
def test_drop_noops_keeps_arithmetic_that_changes_its_input(op, constant_first, value, shape):
    constant = init("c", np.full(shape, value, np.float32))
    inputs = ["c", "x"] if constant_first else ["x", "c"]
    model = make_model(
        [helper.make_node(op, inputs, ["y"])], [tensor("x", ["batch", 2])], [tensor("y", None)], [constant]
    )
    _, applied = drop_noops(model)
    assert applied == 0


def test_merge_constants_lets_repeated_slices_with_their_own_constants_merge():
    """Every Slice of an LSTM's initial state came with its own [0], [2] constants (a PyTorch EEG model)."""
    nodes = [
        helper.make_node("Slice", ["x", "s0", "e0"], ["a"]),
        helper.make_node("Slice", ["x", "s1", "e1"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    starts, ends = np.array([0], np.int64), np.array([2], np.int64)
    model = make_model(
        nodes,
        [tensor("x", [4, 3])],
        [tensor("y", [2, 3])],
        [init("s0", starts), init("e0", ends), init("s1", starts), init("e1", ends)],
    )
    fused, counts = simplify(model)
    assert counts["merge_constants"] == 2 and counts["merge_duplicates"] == 1
    assert ops(fused) == {"Slice": 1, "Add": 1} and len(fused.graph.initializer) == 2
    assert_same_outputs(model, fused, {"x": rand(4, 3)})


def test_merge_constants_leaves_distinct_values_and_graph_inputs_alone():
    nodes = [helper.make_node("Add", ["x", "a"], ["t"]), helper.make_node("Add", ["t", "b"], ["y"])]
    model = make_model(
        nodes,
        [tensor("x", [2]), tensor("b", [2])],
        [tensor("y", [2])],
        [init("a", np.array([1.0, 2.0], np.float32)), init("b", np.array([1.0, 2.0], np.float32))],
    )
    _, applied = merge_constants(model)
    assert applied == 0  # b is also an input: it may be fed


def test_constant_weight_inputs_makes_listed_initializers_constants_so_batchnorm_folds():
    """A face detector exported for IR 3 lists its 194 weights as inputs: nothing could fold until they are not."""
    model = conv_transpose_bn()
    model.graph.input.extend(tensor(t.name, list(t.dims)) for t in model.graph.initializer)
    model.ir_version = 3
    fused, counts = simplify(model)
    assert counts["constant_weight_inputs"] == len(model.graph.initializer)
    assert counts["fold_batchnorm"] == 1 and "BatchNormalization" not in ops(fused)
    assert [i.name for i in fused.graph.input] == ["x"] and fused.ir_version >= 4
    assert_same_outputs(model, fused, {"x": rand(1, 4, 3, 3)})


def test_shape_inference_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` (and a ``<uuid>.data`` per
    weight) in the working directory when an op's shape is unknown (a diacritizer with DynamicQuantizeLSTM)."""
    nodes = [
        helper.make_node("Mystery", ["x"], ["m"], domain="custom.ops"),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    model = make_model(
        nodes, [tensor("x", ["batch", 4])], [tensor("y", ["batch", 4])], [init("shape", np.array([0, 4]))]
    )
    model.opset_import.append(helper.make_opsetid("custom.ops", 1))
    monkeypatch.chdir(tmp_path)
    drop_noops(model)
    assert list(tmp_path.iterdir()) == []
