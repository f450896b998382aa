"""Bench models too big to commit, built with seeded weights the way an exporter would emit them.

- ``resnet18``: the ResNet-18 topology at 224x224 (Conv+BatchNorm+Relu, residual Adds, GlobalAveragePool, Gemm),
  with BatchNorm running statistics set from the activations of seeded random images, so activations keep a sane
  scale through all 8 residual blocks (random weights with default statistics would blow up or vanish).
- ``bert``: a BERT-shaped encoder (4 layers, hidden 384, 12 heads, FFN 1536, sequence 128, vocabulary 30522) in the
  MatMul/Add/Softmax/LayerNormalization form with Erf GELU and the HF attention-mask chain.

Built once per bench run into a cache folder (``bench/.cache``, git-ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CACHE = Path(__file__).parent / ".cache"
OPSET = 17
IR_VERSION = 8


class Graph:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def model(self, name, inputs, outputs) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="optc-bench")
        model.ir_version = IR_VERSION
        return model


# ---------------------------------------------------------------------------------------------------- ResNet-18


def _conv_bn(g: Graph, x: str, name: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
    w = (g.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    g.const(f"{name}.weight", w)
    y = g.op("Conv", [x, f"{name}.weight"], f"{name}", kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
    for p, v in (
        ("gamma", 1 + 0.1 * g.rng.standard_normal(cout)),
        ("beta", 0.1 * g.rng.standard_normal(cout)),
        ("mean", np.zeros(cout)),
        ("var", np.ones(cout)),
    ):
        g.const(f"{name}.bn.{p}", v.astype(np.float32))
    y = g.op(
        "BatchNormalization",
        [y] + [f"{name}.bn.{p}" for p in ("gamma", "beta", "mean", "var")],
        f"{name}.bn",
        epsilon=1e-5,
    )
    return g.op("Relu", [y], f"{name}.relu") if relu else y


def _basic_block(g: Graph, x: str, name: str, cin: int, cout: int, stride: int) -> str:
    h = _conv_bn(g, x, f"{name}.conv1", cin, cout, 3, stride, relu=True)
    h = _conv_bn(g, h, f"{name}.conv2", cout, cout, 3, 1, relu=False)
    shortcut = x if stride == 1 and cin == cout else _conv_bn(g, x, f"{name}.downsample", cin, cout, 1, stride, False)
    return g.op("Relu", [g.op("Add", [h, shortcut], f"{name}.add")], f"{name}.relu")


def build_resnet18(seed: int = 0) -> onnx.ModelProto:
    g = Graph(seed)
    x = _conv_bn(g, "images", "conv1", 3, 64, 7, 2, relu=True)
    x = g.op("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(g, x, f"layer{stage}.{block}", cin, cout, stride)
            cin = cout
    x = g.op("GlobalAveragePool", [x], "avgpool")
    x = g.op("Flatten", [x], "flatten", axis=1)
    g.const("fc.weight", (g.rng.standard_normal((1000, 512)) * np.sqrt(1.0 / 512)).astype(np.float32))
    g.const("fc.bias", np.zeros(1000, np.float32))
    g.nodes.append(helper.make_node("Gemm", [x, "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1))
    model = g.model(
        "resnet18",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])],
    )
    images = resnet_images(8, seed=seed + 1)
    _set_batchnorm_statistics(model, images)
    _center_classifier(model, images)
    return model


def resnet_images(n: int, seed: int) -> np.ndarray:
    """Smooth random images (low-frequency noise), closer to photos than white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, 28, 28)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)


def _set_batchnorm_statistics(model: onnx.ModelProto, images: np.ndarray) -> None:
    """Give each BatchNorm the mean/variance of its actual input, in order, as training would have."""
    inits = {t.name: t for t in model.graph.initializer}
    for bn in [n for n in model.graph.node if n.op_type == "BatchNormalization"]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(helper.make_tensor_value_info(bn.input[0], TensorProto.FLOAT, None))
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        (activation,) = session.run([bn.input[0]], {"images": images})
        for name, value in (
            (bn.input[3], activation.mean(axis=(0, 2, 3))),
            (bn.input[4], activation.var(axis=(0, 2, 3))),
        ):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _center_classifier(model: onnx.ModelProto, images: np.ndarray) -> None:
    """Post-ReLU features are all positive, so random logits share one dominant direction and every image gets the
    same class; subtracting the mean feature's logits makes the top-1 depend on the image, as in a trained net."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("flatten_out", TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    (features,) = session.run(["flatten_out"], {"images": images})
    inits = {t.name: t for t in model.graph.initializer}
    weight = numpy_helper.to_array(inits["fc.weight"])
    bias = -(weight @ features.mean(axis=0))
    inits["fc.bias"].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), "fc.bias"))


# --------------------------------------------------------------------------------------------------------- BERT

BERT = {"layers": 4, "hidden": 384, "heads": 12, "ffn": 1536, "seq": 128, "vocab": 30522}


def _linear(g: Graph, x: str, name: str, fan_in: int, fan_out: int) -> str:
    g.const(f"{name}.weight", (g.rng.standard_normal((fan_in, fan_out)) * 0.02).astype(np.float32))
    g.const(f"{name}.bias", (g.rng.standard_normal(fan_out) * 0.02).astype(np.float32))
    return g.op("Add", [g.op("MatMul", [x, f"{name}.weight"], f"{name}/MatMul"), f"{name}.bias"], f"{name}/Add")


def _layernorm(g: Graph, x: str, name: str, dim: int) -> str:
    g.const(f"{name}.weight", (1 + 0.05 * g.rng.standard_normal(dim)).astype(np.float32))
    g.const(f"{name}.bias", (0.05 * g.rng.standard_normal(dim)).astype(np.float32))
    return g.op("LayerNormalization", [x, f"{name}.weight", f"{name}.bias"], name, axis=-1, epsilon=1e-12)


def build_bert(seed: int = 0, **overrides: int) -> onnx.ModelProto:
    cfg = {**BERT, **overrides}
    hidden, heads, seq = cfg["hidden"], cfg["heads"], cfg["seq"]
    head_dim = hidden // heads
    g = Graph(seed)
    g.const("embeddings.word", (g.rng.standard_normal((cfg["vocab"], hidden)) * 0.02).astype(np.float32))
    g.const("embeddings.position", (g.rng.standard_normal((seq, hidden)) * 0.02).astype(np.float32))
    for name, value in (
        ("shape_bshd", np.array([0, 0, heads, head_dim], np.int64)),
        ("shape_bsh", np.array([0, 0, hidden], np.int64)),
        ("axis_1", np.array([1], np.int64)),
        ("axis_2", np.array([2], np.int64)),
        ("sqrt_head_dim", np.array(np.sqrt(head_dim), np.float32)),
        ("sqrt_2", np.array(np.sqrt(2.0), np.float32)),
        ("one", np.array(1.0, np.float32)),
        ("half", np.array(0.5, np.float32)),
        ("mask_value", np.array(-10000.0, np.float32)),
    ):
        g.const(name, value)
    x = g.op("Gather", ["embeddings.word", "input_ids"], "embeddings/Gather", axis=0)
    x = g.op("Add", [x, "embeddings.position"], "embeddings/Add_position")
    x = _layernorm(g, x, "embeddings.LayerNorm", hidden)
    m = g.op("Unsqueeze", ["attention_mask", "axis_1"], "mask/Unsqueeze_1")
    m = g.op("Unsqueeze", [m, "axis_2"], "mask/Unsqueeze_2")
    m = g.op("Cast", [m], "mask/Cast", to=TensorProto.FLOAT)
    m = g.op("Sub", ["one", m], "mask/Sub")
    mask = g.op("Mul", [m, "mask_value"], "mask/Mul")
    for layer in range(cfg["layers"]):
        p = f"layer{layer}"

        def heads_of(t: str, name: str, perm: list[int]) -> str:
            return g.op(
                "Transpose", [g.op("Reshape", [t, "shape_bshd"], f"{name}/Reshape")], f"{name}/Transpose", perm=perm
            )

        q = heads_of(_linear(g, x, f"{p}.query", hidden, hidden), f"{p}.query", [0, 2, 1, 3])
        k = heads_of(_linear(g, x, f"{p}.key", hidden, hidden), f"{p}.key", [0, 2, 3, 1])
        v = heads_of(_linear(g, x, f"{p}.value", hidden, hidden), f"{p}.value", [0, 2, 1, 3])
        s = g.op("Div", [g.op("MatMul", [q, k], f"{p}.attn/MatMul_QK"), "sqrt_head_dim"], f"{p}.attn/Div")
        s = g.op("Softmax", [g.op("Add", [s, mask], f"{p}.attn/Add_mask")], f"{p}.attn/Softmax", axis=-1)
        c = g.op("Transpose", [g.op("MatMul", [s, v], f"{p}.attn/MatMul_V")], f"{p}.attn/Transpose", perm=[0, 2, 1, 3])
        c = g.op("Reshape", [c, "shape_bsh"], f"{p}.attn/Reshape")
        h = g.op("Add", [_linear(g, c, f"{p}.attn_output", hidden, hidden), x], f"{p}.attn/Add_residual")
        x = _layernorm(g, h, f"{p}.attn_LayerNorm", hidden)
        f = _linear(g, x, f"{p}.intermediate", hidden, cfg["ffn"])
        e = g.op("Erf", [g.op("Div", [f, "sqrt_2"], f"{p}.gelu/Div")], f"{p}.gelu/Erf")
        e = g.op(
            "Mul",
            [g.op("Mul", [f, g.op("Add", [e, "one"], f"{p}.gelu/Add")], f"{p}.gelu/Mul"), "half"],
            f"{p}.gelu/Mul_half",
        )
        h = g.op("Add", [_linear(g, e, f"{p}.output", cfg["ffn"], hidden), x], f"{p}.output/Add_residual")
        x = _layernorm(g, h, f"{p}.output_LayerNorm", hidden)
    g.nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    return g.model(
        "bert_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", seq]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", seq, hidden])],
    )


def bert_inputs(n: int, seed: int, seq: int = BERT["seq"], vocab: int = BERT["vocab"]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, (n, seq)).astype(np.int64)
    ids[:, 0] = 101  # [CLS]
    mask = np.ones((n, seq), np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def cached(name: str) -> Path:
    """Path of a bench model, built on first use."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"{name}.onnx"
    if not path.exists():
        model = {"resnet18": build_resnet18, "bert": build_bert}[name]()
        onnx.checker.check_model(model)
        tmp = path.with_suffix(".tmp")
        onnx.save_model(model, str(tmp))
        tmp.rename(path)
    return path


if __name__ == "__main__":
    for bench_model in ("resnet18", "bert"):
        print(bench_model, cached(bench_model), f"{cached(bench_model).stat().st_size / 1e6:.1f} MB")
