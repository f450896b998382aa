"""Dynamic int8 of embedding tables: Gather reads int8 rows, Cast + Mul by the scales restore them."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optc.data import Dataset
from optc.model_facts import op_histogram
from optc.passes.exclude import ExcludeSpec
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.quantize_gather import embedding_gathers, quantize_gathers
from optc.passes.registry import PassContext
from tests.conftest import make_model

VOCAB, HIDDEN = 200, 32


def encoder(tied_head: bool = False, token_types: bool = False) -> onnx.ModelProto:
    """ids[batch, seq] -> Gather(table) -> MatMul(W) -> y; optionally a head reading the table again (tied weights)
    and a 2-row token-type table added to the embeddings."""
    rng = np.random.default_rng(0)
    # columns of very different ranges, as BERT's outlier dimensions: per-column scales must keep the small ones
    table = (rng.standard_normal((VOCAB, HIDDEN)) * np.geomspace(0.01, 3, HIDDEN)).astype(np.float32)
    weights = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / 6, "W"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embed"),
        helper.make_node("MatMul", ["embedded", "W"], ["y"], name="dense"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", HIDDEN])]
    if token_types:
        weights.append(numpy_helper.from_array(rng.standard_normal((2, HIDDEN)).astype(np.float32), "types"))
        nodes[0:1] = [
            helper.make_node("Gather", ["table", "ids"], ["words"], name="embed"),
            helper.make_node("Gather", ["types", "ids_types"], ["typed"], name="embed_types"),
            helper.make_node("Add", ["words", "typed"], ["embedded"], name="sum"),
        ]
    if tied_head:
        nodes.append(helper.make_node("Gemm", ["y2d", "table"], ["logits"], name="head", transB=1))
        nodes.insert(2, helper.make_node("Reshape", ["y", "flat"], ["y2d"], name="flatten"))
        weights.append(numpy_helper.from_array(np.array([-1, HIDDEN], dtype=np.int64), "flat"))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, VOCAB]))
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])]
    if token_types:
        inputs.append(helper.make_tensor_value_info("ids_types", TensorProto.INT64, ["batch", "seq"]))
    return make_model(nodes, inputs, outputs, weights)


def ids(model: onnx.ModelProto, batch: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feed = {"ids": rng.integers(0, VOCAB, (batch, 7))}
    if any(i.name == "ids_types" for i in model.graph.input):
        feed["ids_types"] = rng.integers(0, 2, (batch, 7))
    return feed


def run(model: onnx.ModelProto, feed: dict, output: str = "y") -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run([output], feed)[0]


def table_step(model: onnx.ModelProto, per_column: bool) -> np.ndarray:
    """The quantization step of the table: symmetric int8 per column or over the whole table."""
    table = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "table"))
    return np.abs(table).max(axis=0 if per_column else None) / 127


def gathered_rows(model: onnx.ModelProto, quantized: onnx.ModelProto) -> tuple[np.ndarray, np.ndarray]:
    """The embedded rows of ``quantized`` and the float table's rows for the same ids."""
    table = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "table"))
    exposed = onnx.ModelProto()
    exposed.CopyFrom(quantized)
    exposed.graph.output.append(helper.make_tensor_value_info("embedded", TensorProto.FLOAT, None))
    feed = ids(model)
    return run(exposed, feed, "embedded"), table[feed["ids"]]


def context(tmp_path: Path, model: onnx.ModelProto) -> PassContext:
    return PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        target="x86-avx2",  # the same int8 defaults (7-bit weights) whatever CPU runs the test
        dataset=Dataset(inputs=ids(model), labels=None, source="synthetic"),
    )


def test_table_is_stored_in_int8_and_gathered_rows_are_restored_per_column():
    model = encoder()
    quantized = quantize_gathers(model, embedding_gathers(model), per_channel=True)
    tensors = {t.name: t for t in quantized.graph.initializer}
    assert "table" not in tensors
    assert tensors["table_quantized"].data_type == TensorProto.INT8
    assert list(tensors["table_quantized"].dims) == [VOCAB, HIDDEN]
    # not DequantizeLinear, which ONNX Runtime's QDQ propagation requantizes after a following Transpose
    assert [n.op_type for n in quantized.graph.node] == ["Gather", "Cast", "Mul", "MatMul"]
    onnx.checker.check_model(quantized, full_check=True)
    # the gathered rows are exact up to half a step of their column's scale, small columns included
    rows, expected = gathered_rows(model, quantized)
    assert np.all(np.abs(rows - expected) <= table_step(model, per_column=True) / 2 * 1.0001)
    assert quantized.ByteSize() < model.ByteSize() * 0.4


def test_per_tensor_scale_when_per_channel_is_off():
    model = encoder()
    quantized = quantize_gathers(model, embedding_gathers(model), per_channel=False)
    tensors = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    assert tensors["table_quantized"].dtype == np.int8 and tensors["table_scale"].size == 1
    rows, expected = gathered_rows(model, quantized)
    assert np.all(np.abs(rows - expected) <= table_step(model, per_column=False) / 2 * 1.0001)


def test_small_tables_and_tables_a_matmul_also_reads_stay_float():
    """A 2-row token-type table would save less than its new nodes; a table a tied head also reads keeps its float
    copy, so an int8 copy beside it would grow the model."""
    assert embedding_gathers(encoder(token_types=True)) == {"embed"}
    assert embedding_gathers(encoder(tied_head=True)) == set()


def test_int8_dynamic_quantizes_embeddings_by_default_and_exclude_keeps_them_float(tmp_path: Path):
    model = encoder()
    config = QuantizeConfig(type="quantize", mode="dynamic")
    outcome = run_quantize(model, config, context(tmp_path, model))
    ops = op_histogram(outcome.model)
    assert ops.get("Cast") == 2 and ops.get("MatMulInteger") == 1  # the Gather's and the MatMul's rescale
    assert outcome.details["ops_quantized"] == 2
    expected, got = run(model, ids(model)), run(outcome.model, ids(model))
    assert np.abs(expected - got).max() < 0.05 * np.abs(expected).max()

    excluded = config.model_copy(update={"exclude": ExcludeSpec(nodes=["embed"])})
    outcome = run_quantize(model, excluded, context(tmp_path, model))
    assert op_histogram(outcome.model).get("Cast") == 1  # the MatMul's rescale only
    assert "table" in {t.name for t in outcome.model.graph.initializer}
