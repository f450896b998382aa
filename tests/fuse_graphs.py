"""Tiny graphs for the fuse tests, each holding exactly one pattern, plus the checks every rewrite test makes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import make_model

RNG = np.random.default_rng(0)


def tensor(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def rand(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feeds, rtol=1e-5) -> None:
    onnx.checker.check_model(after)
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    for expected, got in zip(run(before, feeds), run(after, feeds), strict=True):
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * float(np.abs(expected).max()))


def batchnorm_params(prefix: str, channels: int) -> list[onnx.TensorProto]:
    return [
        init(f"{prefix}.gamma", 1 + 0.1 * rand(channels)),
        init(f"{prefix}.beta", rand(channels)),
        init(f"{prefix}.mean", rand(channels)),
        init(f"{prefix}.var", np.abs(rand(channels)) + 0.5),
    ]


def batchnorm(x: str, y: str, prefix: str) -> onnx.NodeProto:
    inputs = [x] + [f"{prefix}.{p}" for p in ("gamma", "beta", "mean", "var")]
    return helper.make_node("BatchNormalization", inputs, [y], name=prefix, epsilon=1e-5)


def conv_bn(second_reader: bool = False) -> onnx.ModelProto:
    """x -> Conv -> BatchNorm -> y; with ``second_reader`` the Conv output is also a graph output."""
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        batchnorm("c", "y", "bn"),
    ]
    outputs = [tensor("y", [2, 4, 5, 5])] + ([tensor("c", [2, 4, 5, 5])] if second_reader else [])
    return make_model(
        nodes,
        [tensor("x", [2, 3, 5, 5])],
        outputs,
        [init("W", rand(4, 3, 3, 3)), init("B", rand(4)), *batchnorm_params("bn", 4)],
    )


def conv_transpose_bn() -> onnx.ModelProto:
    """Grouped ConvTranspose (2 groups, 6 output channels, no bias) -> BatchNorm."""
    nodes = [helper.make_node("ConvTranspose", ["x", "W"], ["c"], name="deconv", group=2), batchnorm("c", "y", "bn")]
    return make_model(
        nodes,
        [tensor("x", [1, 4, 3, 3])],
        [tensor("y", [1, 6, 5, 5])],
        [init("W", rand(4, 3, 3, 3)), *batchnorm_params("bn", 6)],
    )


def gemm_bn() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["x", "W", "B"], ["g"], name="fc", transB=1, alpha=0.5, beta=2.0),
        batchnorm("g", "y", "bn"),
    ]
    return make_model(
        nodes,
        [tensor("x", [3, 8])],
        [tensor("y", [3, 5])],
        [init("W", rand(5, 8)), init("B", rand(5)), *batchnorm_params("bn", 5)],
    )


def matmul_add(rank: int) -> onnx.ModelProto:
    shape = [4, 8] if rank == 2 else [2, 4, 8]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="proj"),
        helper.make_node("Add", ["m", "b"], ["y"], name="proj_bias"),
    ]
    return make_model(
        nodes, [tensor("x", shape)], [tensor("y", shape[:-1] + [6])], [init("W", rand(8, 6)), init("b", rand(6))]
    )


def conv_scale_bias(scale_shape) -> onnx.ModelProto:
    """Conv -> Mul by a constant of ``scale_shape`` -> Sub a per-channel constant."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Mul", ["s", "c"], ["m"], name="scale"),
        helper.make_node("Sub", ["m", "t"], ["y"], name="shift"),
    ]
    return make_model(
        nodes,
        [tensor("x", [1, 3, 4, 4])],
        [tensor("y", [1, 4, 4, 4])],
        [init("W", rand(4, 3, 1, 1)), init("s", rand(*scale_shape)), init("t", rand(4, 1, 1))],
    )
