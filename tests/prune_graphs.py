"""Tiny onnx.helper graphs for the pruning tests, each a case the channel surgery must get right."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optc.data import Dataset
from optc.passes.registry import PassContext


class TinyGraph:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        self.initializers.append(numpy_helper.from_array(self.rng.standard_normal(shape).astype(np.float32), name))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        output = output or f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=name, **attrs))
        return output

    def conv(
        self, x: str, name: str, cin: int, cout: int, group: int = 1, bias: bool = True, output: str | None = None
    ) -> str:
        inputs = [x, self.weight(f"{name}.w", (cout, cin // group, 3, 3))]
        if bias:
            inputs.append(self.weight(f"{name}.b", (cout,)))
        return self.op("Conv", inputs, name, output, kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group)

    def batchnorm(self, x: str, name: str, channels: int) -> str:
        params = [self.weight(f"{name}.{p}", (channels,)) for p in ("scale", "bias", "mean")]
        self.initializers.append(numpy_helper.from_array(np.ones(channels, np.float32) * 2, f"{name}.var"))
        return self.op("BatchNormalization", [x, *params, f"{name}.var"], name)

    def model(self, inputs: dict[str, list], outputs: dict[str, list]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "tiny",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model

    def set(self, name: str, value: np.ndarray) -> None:
        tensor = next(t for t in self.initializers if t.name == name)
        tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(next(t for t in self.initializers if t.name == name)).copy()

    def zero_channels(self, name: str, channels: list[int], axis: int = 0) -> None:
        value = self.array(name)
        index = [slice(None)] * value.ndim
        index[axis] = channels
        value[tuple(index)] = 0
        self.set(name, value)


def chain() -> onnx.ModelProto:
    """Conv→BN→Relu→Conv; channels 4..7 of conv1 produce exact zeros after BN (zero weight, mean and beta)."""
    g = TinyGraph()
    h = g.op("Relu", [g.batchnorm(g.conv("x", "conv1", 3, 8, bias=False), "bn1", 8)], "relu1")
    g.op("Conv", [h, g.weight("conv2.w", (4, 8, 3, 3))], "conv2", output="y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    for name in ("conv1.w", "bn1.mean", "bn1.bias"):
        g.zero_channels(name, [4, 5, 6, 7])
    return g.model({"x": ["N", 3, 8, 8]}, {"y": ["N", 4, 8, 8]})


def residual(shortcut_from_input: bool = False) -> onnx.ModelProto:
    """stem Conv→Relu, a block Conv→BN→Relu→Conv, Add with the stem (or with the graph input), Relu, head Conv."""
    g = TinyGraph(1)
    x = "x" if shortcut_from_input else g.op("Relu", [g.conv("x", "stem", 8, 8)], "stem_relu")
    h = g.op("Relu", [g.batchnorm(g.conv(x, "convA", 8, 8), "bnA", 8)], "reluA")
    h = g.conv(h, "convB", 8, 8)
    h = g.op("Relu", [g.op("Add", [h, x], "add")], "relu_out")
    g.op("Conv", [h, g.weight("head.w", (2, 8, 3, 3))], "head", output="y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return g.model({"x": ["N", 8, 6, 6]}, {"y": ["N", 2, 6, 6]})


def conv_flatten_gemm() -> onnx.ModelProto:
    """Conv→Relu→Flatten→Gemm→Relu→Gemm; conv channels 1, 3, 5 and fc1 features 0, 2, 4, 6, 8 are all-zero."""
    g = TinyGraph(2)
    h = g.op("Flatten", [g.op("Relu", [g.conv("x", "conv", 2, 6)], "relu")], "flatten", axis=1)
    h = g.op("Gemm", [h, g.weight("fc1.w", (10, 96)), g.weight("fc1.b", (10,))], "fc1", transB=1)
    h = g.op("Relu", [h], "relu_fc1")
    g.op("Gemm", [h, g.weight("fc2.w", (10, 3))], "fc2", output="y")
    g.zero_channels("conv.w", [1, 3, 5])
    g.zero_channels("conv.b", [1, 3, 5])
    g.zero_channels("fc1.w", [0, 2, 4, 6, 8])
    g.zero_channels("fc1.b", [0, 2, 4, 6, 8])
    return g.model({"x": ["N", 2, 4, 4]}, {"y": ["N", 3]})


def matmul_mlp() -> onnx.ModelProto:
    """MatMul→Add(bias)→Relu→MatMul: output features of a MatMul weight, and its bias, shrink together."""
    g = TinyGraph(3)
    h = g.op("Add", [g.op("MatMul", ["x", g.weight("w1", (6, 8))], "mm1"), g.weight("b1", (8,))], "bias1")
    g.op("MatMul", [g.op("Relu", [h], "relu"), g.weight("w2", (8, 3))], "mm2", output="y")
    return g.model({"x": ["N", 6]}, {"y": ["N", 3]})


def depthwise() -> onnx.ModelProto:
    """Conv→Relu→depthwise Conv (group = channels)→Relu→pointwise Conv."""
    g = TinyGraph(4)
    h = g.op("Relu", [g.conv("x", "conv1", 3, 8)], "relu1")
    h = g.op("Relu", [g.conv(h, "dw", 8, 8, group=8)], "relu2")
    g.op("Conv", [h, g.weight("pw.w", (4, 8, 1, 1))], "pw", output="y", kernel_shape=[1, 1])
    return g.model({"x": ["N", 3, 8, 8]}, {"y": ["N", 4, 8, 8]})


def grouped() -> onnx.ModelProto:
    """Conv→Relu→grouped Conv (group 2): the first Conv's channels are tied to the groups and must stay."""
    g = TinyGraph(5)
    h = g.op("Relu", [g.conv("x", "conv1", 3, 8)], "relu1")
    g.op("Conv", [h, g.weight("gconv.w", (4, 4, 3, 3))], "gconv", output="y", kernel_shape=[3, 3], group=2)
    return g.model({"x": ["N", 3, 8, 8]}, {"y": ["N", 4, 6, 6]})


def concat() -> onnx.ModelProto:
    """Two Conv branches concatenated on the channels, then a Conv; convA channels 1, 3 and convB 0, 2, 4 are zero."""
    g = TinyGraph(6)
    a = g.op("Relu", [g.conv("x", "convA", 3, 4)], "reluA")
    b = g.op("Relu", [g.conv("x", "convB", 3, 6)], "reluB")
    h = g.op("Concat", [a, b], "concat", axis=1)
    g.op("Conv", [h, g.weight("out.w", (2, 10, 3, 3))], "out", output="y", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    for name, channels in (("convA", [1, 3]), ("convB", [0, 2, 4])):
        g.zero_channels(f"{name}.w", channels)
        g.zero_channels(f"{name}.b", channels)
    return g.model({"x": ["N", 3, 8, 8]}, {"y": ["N", 2, 8, 8]})


def two_outputs() -> onnx.ModelProto:
    """out1 = Neg(Relu(x)); out2 = Exp(Relu(x)) + Abs(z): keeping out1 must drop exp, abs and sum, and input z."""
    g = TinyGraph(7)
    r = g.op("Relu", ["x"], "relu")
    g.op("Neg", [r], "neg", output="out1")
    g.op("Add", [g.op("Exp", [r], "exp"), g.op("Abs", ["z"], "abs")], "sum", output="out2")
    return g.model({"x": ["N", 4], "z": ["N", 4]}, {"out1": ["N", 4], "out2": ["N", 4]})


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def pass_context(tmp_path, method: str, dataset: Dataset | None = None) -> PassContext:
    return PassContext(
        label=f"passes[0] prune ({method})",
        workdir=tmp_path,
        seed=0,
        dataset=dataset or Dataset(inputs={}, labels=None, source="synthetic"),
    )


def channels_through(middle: str, **attrs) -> onnx.ModelProto:
    """Conv (8 channels) → ``middle`` op → a consumer Conv; channels 4..7 are zero out of the first Conv and have
    zero weights in the consumer, so removing them changes nothing even where ``middle`` turns zeros into non-zeros
    (Softmax). ``middle`` acts on H and W only, as its constant inputs say."""
    g = TinyGraph(8)
    h = g.conv("x", "conv1", 3, 8)
    constants = {
        "Resize": lambda: ["", g.const("scales", np.array([1, 1, 2, 2], np.float32))],
        "Pad": lambda: [g.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))],
        "Slice": lambda: [g.const(n, np.array([v], np.int64)) for n, v in (("starts", 1), ("ends", 5), ("axes", 3))],
    }
    h = g.op(middle, [h, *constants.get(middle, list)()], "middle", **attrs)
    g.op("Conv", [h, g.weight("conv2.w", (4, 8, 1, 1))], "conv2", output="y", kernel_shape=[1, 1])
    for name, axis in (("conv1.w", 0), ("conv1.b", 0), ("conv2.w", 1)):
        g.zero_channels(name, [4, 5, 6, 7], axis)
    return g.model({"x": ["N", 3, 6, 6]}, {"y": ["N", 4, None, None]})


def reduce_then_gemm(axes: list[int], keepdims: int = 0) -> onnx.ModelProto:
    """Conv → ReduceMean over ``axes`` (an attribute at opset 17) → Gemm (a global pool written as a reduction);
    channels 4..7 all-zero."""
    g = TinyGraph(9)
    h = g.op("ReduceMean", [g.conv("x", "conv", 3, 8)], "reduce", axes=axes, keepdims=keepdims)
    g.op("Gemm", [h, g.weight("fc.w", (8, 4))], "fc", output="y")
    for name in ("conv.w", "conv.b"):
        g.zero_channels(name, [4, 5, 6, 7])
    return g.model({"x": ["N", 3, 6, 6]}, {"y": ["N", 4]})


def transpose_then_matmul() -> onnx.ModelProto:
    """Conv → Transpose to channels-last → MatMul over the channels; channels 4..7 all-zero."""
    g = TinyGraph(10)
    h = g.op("Transpose", [g.conv("x", "conv", 3, 8)], "to_nhwc", perm=[0, 2, 3, 1])
    g.op("MatMul", [h, g.weight("w", (8, 5))], "mm", output="y")
    for name in ("conv.w", "conv.b"):
        g.zero_channels(name, [4, 5, 6, 7])
    return g.model({"x": ["N", 3, 6, 6]}, {"y": ["N", 6, 6, 5]})


def conv1d_as_conv2d() -> onnx.ModelProto:
    """tf2onnx's Conv1D: Unsqueeze → 1×3 Conv → Squeeze, twice; the first one's channels 4..7 all-zero."""
    g = TinyGraph(11)
    axes = g.const("axes", np.array([2], np.int64))
    h = "x"
    for name, cin, cout in (("c1", 3, 8), ("c2", 8, 4)):
        h = g.op("Unsqueeze", [h, axes], f"{name}_unsqueeze")
        w = g.weight(f"{name}.w", (cout, cin, 1, 3))
        h = g.op("Conv", [h, w], name, kernel_shape=[1, 3], pads=[0, 1, 0, 1])
        h = g.op("Squeeze", [h, axes], f"{name}_squeeze", output="y" if name == "c2" else None)
        if name == "c1":
            h = g.op("Relu", [h], "relu")
    g.zero_channels("c1.w", [4, 5, 6, 7])
    return g.model({"x": ["N", 3, 10]}, {"y": ["N", 4, 10]})


def conv_transpose() -> onnx.ModelProto:
    """Conv → Relu → ConvTranspose (stride 2): the Conv's channels are the ConvTranspose's input channels (axis 0 of
    its weight); channels 4..7 all-zero."""
    g = TinyGraph(12)
    h = g.op("Relu", [g.conv("x", "conv", 3, 8)], "relu")
    g.op("ConvTranspose", [h, g.weight("up.w", (8, 4, 2, 2))], "up", output="y", kernel_shape=[2, 2], strides=[2, 2])
    for name in ("conv.w", "conv.b"):
        g.zero_channels(name, [4, 5, 6, 7])
    return g.model({"x": ["N", 3, 6, 6]}, {"y": ["N", 4, 12, 12]})


def unrolled_steps(second_step_is_output: bool = False) -> onnx.ModelProto:
    """Two time steps through one shared MatMul weight, concatenated along the batch axis, then a second MatMul (an
    unrolled RNN cell, as tf2onnx writes them); output features 4..7 of the shared weight are all-zero. With
    ``second_step_is_output`` the second step is a graph output, so it cannot lose features and the first can."""
    g = TinyGraph(13)
    w = g.weight("w", (6, 8))
    g.zero_channels("w", [4, 5, 6, 7], axis=1)
    first = g.op("MatMul", ["x1", w], "step1")
    second = g.op("MatMul", ["x2", w], "step2", output="h2" if second_step_is_output else None)
    h = first if second_step_is_output else g.op("Concat", [first, second], "steps", axis=0)
    g.op("MatMul", [g.op("Relu", [h], "relu"), g.weight("w2", (8, 3))], "head", output="y")
    outputs = {"y": ["M", 3]} | ({"h2": ["N", 8]} if second_step_is_output else {})
    return g.model({"x1": ["N", 6], "x2": ["N", 6]}, outputs)


def reshaped_steps(shared_target: bool) -> onnx.ModelProto:
    """Two branches, each MatMul over [N, 3, 6] → Reshape to [-1, 8] (time steps into the batch, as Keras'
    TimeDistributed exports) → Relu → MatMul; branch a's features 4..7 and branch b's 0..3 are all-zero. With
    ``shared_target`` both Reshapes read one [-1, 8] constant, as tf2onnx writes it."""
    g = TinyGraph(14)
    target = g.const("target", np.array([-1, 8], np.int64)) if shared_target else None
    for branch, zero in (("a", [4, 5, 6, 7]), ("b", [0, 1, 2, 3])):
        h = g.op("MatMul", [f"x_{branch}", g.weight(f"w_{branch}", (6, 8))], f"mm_{branch}")
        shape = target or g.const(f"target_{branch}", np.array([-1, 8], np.int64))
        h = g.op("Relu", [g.op("Reshape", [h, shape], f"reshape_{branch}")], f"relu_{branch}")
        g.op("MatMul", [h, g.weight(f"head_{branch}", (8, 2))], f"head_{branch}", output=f"y_{branch}")
        g.zero_channels(f"w_{branch}", zero, axis=1)
    return g.model({"x_a": ["N", 3, 6], "x_b": ["N", 3, 6]}, {"y_a": ["M", 2], "y_b": ["M", 2]})


def siamese() -> onnx.ModelProto:
    """One Conv weight applied to two inputs, both outputs concatenated on the channels, a 1×1 Conv head (capspot's
    similarity net); channels 4..7 of the shared Conv are zero."""
    g = TinyGraph(15)
    g.weight("conv.w", (8, 3, 3, 3))
    g.weight("conv.b", (8,))
    a, b = (g.op("Relu", [g.op("Conv", [x, "conv.w", "conv.b"], f"conv_{x}", kernel_shape=[3, 3])], f"relu_{x}")
            for x in ("x1", "x2"))  # fmt: skip
    h = g.op("Concat", [a, b], "both", axis=1)
    g.op("Conv", [h, g.weight("head.w", (4, 16, 1, 1))], "head", output="y", kernel_shape=[1, 1])
    for name in ("conv.w", "conv.b"):
        g.zero_channels(name, [4, 5, 6, 7])
    return g.model({"x1": ["N", 3, 6, 6], "x2": ["N", 3, 6, 6]}, {"y": ["N", 4, 4, 4]})


def conv_silu_split(conv_output_read_elsewhere: bool = False) -> onnx.ModelProto:
    """YOLOv8's C2f entry: Conv (8 channels) → SiLU → Split in halves, each half into its own 1×1 Conv, both summed.
    Channels 2, 3 (first half) and 6, 7 (second half) are zero and have zero weights in the Conv they reach. With
    ``conv_output_read_elsewhere`` the Conv's output is also a graph output, so it cannot be cut in two."""
    g = TinyGraph(17)
    h = g.conv("x", "conv", 3, 8, output="conv_out" if conv_output_read_elsewhere else None)
    h = g.op("Mul", [h, g.op("Sigmoid", [h], "sigmoid")], "silu")
    halves = ["half0", "half1"]
    g.nodes.append(helper.make_node("Split", [h, g.const("sizes", np.array([4, 4], np.int64))], halves, name="split",
                                    axis=1))  # fmt: skip
    heads = [g.op("Conv", [half, g.weight(f"head{i}.w", (2, 4, 1, 1))], f"head{i}", kernel_shape=[1, 1])
             for i, half in enumerate(halves)]  # fmt: skip
    g.op("Add", heads, "sum", output="y")
    for name in ("conv.w", "conv.b"):
        g.zero_channels(name, [2, 3, 6, 7])
    for head in ("head0.w", "head1.w"):
        g.zero_channels(head, [2, 3], axis=1)
    outputs = {"y": ["N", 2, 6, 6]} | ({"conv_out": ["N", 8, 6, 6]} if conv_output_read_elsewhere else {})
    return g.model({"x": ["N", 3, 6, 6]}, outputs)
