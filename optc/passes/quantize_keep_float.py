"""Nodes that int8 cannot serve, kept in float by default, each with the reason the report gives.

Int8 with a range fitted to the whole tensor rounds small magnitudes to zero. That is harmless for most layers but
fatal where a value's small magnitude matters: the argument of ``Log``/``Sqrt``/``Reciprocal``, of ``Pow`` by an
exponent below 1, and a ``Div`` denominator (power spectra → log-mel turn into -inf or huge values). So the chain
that produces such an input is kept in float, back to and including the nearest weighted op where that op's values
reach the input one for one; behind a reduction (LayerNorm's or RMSNorm's mean of squares) one rounded element
averages away, and a wake-word head's two Gemms before decomposed LayerNorms had been kept float for nothing.
With ``outputs`` (static int8, where a quantized node's output is itself rounded to int8), squashing activations
that write a graph output (Sigmoid, Softmax, ...) stay in float too: 256 levels across a probability's range turn a
wake-word score of 1e-4 into 0 or 2e-4; so do recurrent cells (``LSTM``/``GRU``/``RNN``) and the nodes reading their
state outputs, whose states would be rounded at every step. Dynamic int8 quantizes an LSTM's weights and requantizes
its state each step (``DynamicQuantizeLSTM``), and its fidelity search judges the result: on the corpus's LSTM
models that took a wake-word head from 1.00 of its fp32 size to 0.29 and three word segmenters from 0.65–0.69 to
0.36–0.37, cosine ≥ 0.9997; the search kept a fourth segmenter's LSTMs float.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

SMALL_MAGNITUDE_OPS = {"Log": (0,), "Sqrt": (0,), "Pow": (0,), "Reciprocal": (0,), "Div": (1,)}
# Where a value rounded to zero becomes infinite; weight-only's rule (``blow_up_readers``) checks only these: its
# blockwise int8 input keeps small values far better than a per-tensor range.
BLOW_UP_OPS = {"Log": (0,), "Reciprocal": (0,), "Div": (1,)}
# Ops each of whose output elements is one input element, or made from one element per input: a value rounded to
# zero reaches the sensitive input as it is. Past any other op (a reduction such as a norm's mean of squares, a
# Softmax, a pooling) one rounded element averages away, so a weighted node found beyond one stays quantized.
VALUE_PRESERVING_OPS = frozenset(
    {"Add", "Sub", "Mul", "Div", "Max", "Min", "Clip", "Abs", "Relu", "Pow", "Sqrt", "Neg", "Exp", "Cast", "Identity"}
    | {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "Concat", "Split", "Expand", "Pad"}
)
RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
SQUASHING_OPS = {"Sigmoid", "Softmax", "LogSoftmax", "Tanh", "HardSigmoid", "Softplus"}
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# Walking up from a sensitive input stops after this many producers: far-away layers are not what rounds to zero.
MAX_CHAIN = 6


def float_sensitive_nodes(graph: onnx.GraphProto, outputs: bool) -> dict[str, str]:
    """Node name → why it stays in float."""
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    reasons: dict[str, str] = {}
    if outputs:
        for output in graph.output:
            node = producers.get(output.name)
            if node is not None and node.op_type in SQUASHING_OPS:
                reasons[node.name] = f"writes graph output {output.name!r}, a score int8 would round to 256 levels"
    for tensor, why in _sensitive_inputs(graph, SMALL_MAGNITUDE_OPS, "where int8 rounds small values to zero"):
        for producer in _producer_chain(tensor, producers, initializers):
            reasons.setdefault(producer.name, why)
    for node in graph.node if outputs else ():
        if node.op_type in RECURRENT_OPS:
            reasons.setdefault(node.name, f"recurrent cell ({node.op_type}): quantization error compounds over time")
            states = set(node.output[1:]) - {""}
            for consumer in graph.node:
                if states & set(consumer.input):
                    reasons.setdefault(consumer.name, f"reads the state output of {node.op_type} {node.name!r}")
    return reasons


def blow_up_readers(graph: onnx.GraphProto) -> dict[str, str]:
    """Weighted node name → why it stays in float, for the weighted nodes whose output reaches the input of ``Log`` or
    ``Reciprocal``, or a ``Div`` denominator, value for value."""
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    reasons: dict[str, str] = {}
    for tensor, why in _sensitive_inputs(graph, BLOW_UP_OPS, "where a value rounded to zero becomes infinite"):
        for producer in _producer_chain(tensor, producers, initializers):
            if producer.op_type in WEIGHTED_OPS:
                reasons.setdefault(producer.name, why)
    return reasons


def _sensitive_inputs(
    graph: onnx.GraphProto, ops: dict[str, tuple[int, ...]], consequence: str
) -> Iterator[tuple[str, str]]:
    """Each input ``ops`` lists (a Div's denominator, a Log's argument), with the reason its producers give. A ``Pow``
    by a constant exponent of 1 or more (a norm's square) counts not: a small base rounded to zero stays small."""
    exponents = _constant_values(graph)
    for node in graph.node:
        if node.op_type == "Pow" and len(node.input) > 1 and (exponents.get(node.input[1], np.zeros(1)) >= 1).all():
            continue
        for index in ops.get(node.op_type, ()):
            if index < len(node.input):
                role = "denominator" if node.op_type == "Div" else "input"
                yield node.input[index], f"feeds the {role} of {node.op_type} {node.name!r}, {consequence}"


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The small constant tensors (initializers and ``Constant`` outputs): exponents and the like."""
    values = {
        t.name: numpy_helper.to_array(t) for t in graph.initializer if np.prod(t.dims) <= 16 and not t.external_data
    }
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = node.attribute[0].t
            if np.prod(tensor.dims) <= 16:
                values[node.output[0]] = numpy_helper.to_array(tensor)
    return values


def _producer_chain(tensor: str, producers: dict[str, onnx.NodeProto], initializers: set[str]) -> list[onnx.NodeProto]:
    """The nodes computing ``tensor``, walking up through non-weighted ops until the nearest weighted one; a weighted
    node counts only where every op between it and ``tensor`` is in ``VALUE_PRESERVING_OPS``."""
    chain: list[onnx.NodeProto] = []
    frontier = [(tensor, True)]  # (tensor, reached value for value)
    while frontier and len(chain) < MAX_CHAIN:
        name, direct = frontier.pop(0)
        node = producers.get(name)
        if node is None or node in chain:
            continue
        if node.op_type in WEIGHTED_OPS:
            if direct:
                chain.append(node)
            continue
        chain.append(node)
        passes = direct and node.op_type in VALUE_PRESERVING_OPS
        frontier.extend((source, passes) for source in node.input if source and source not in initializers)
    return chain
