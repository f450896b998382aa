"""Trace which tensors carry which layer's output channels, and which layers are coupled and must be pruned together.

One sweep over the (topologically sorted) graph gives every tensor that carries prunable channels a ``Layout``: the
layers whose channels it holds, in order, along one axis. Channel-preserving ops (activations, BatchNorm, pooling,
depthwise Conv) pass a layout on; Add/Mul and friends couple the layouts they combine (a residual block's layers
become one group); Concat joins layouts; Flatten spreads each channel over its H×W features. Every weight whose axis
follows a layout is recorded as an ``Edit``. Anything optc cannot follow (Reshape, Transpose, a graph output, a grouped
Conv, ...) blocks the layers whose channels reach it, with the reason: those groups are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from optc.model_facts import attribute
from optc.passes.prune.layers import WeightedLayer, weighted_layer
from optc.passes.prune.outputs import names_read

UNARY_PASSTHROUGH = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
        "Softsign", "Identity", "Dropout", "Erf", "Gelu", "Neg", "Abs", "Sqrt", "Exp", "Mish",
    }
)  # fmt: skip
POOLS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow"})


@dataclass(frozen=True)
class Segment:
    layer: str | None  # the producing layer, or None for channels that cannot be pruned (a fixed Concat input)
    size: int  # channels
    repeat: int = 1  # consecutive features per channel (a Flatten of C×H×W gives H·W)


@dataclass(frozen=True)
class Layout:
    segments: tuple[Segment, ...]
    axis: int  # the channel axis, counted from the end (negative), so it survives broadcasting
    rank: int | None  # the tensor's rank where known

    @property
    def size(self) -> int:
        return sum(s.size * s.repeat for s in self.segments)

    def channel_axis_is(self, axis: int) -> bool:
        return self.rank is not None and self.axis + self.rank == axis


@dataclass(frozen=True)
class Edit:
    """Keep, along ``axis`` of initializer ``tensor``, the entries the layout's surviving channels map to."""

    tensor: str
    axis: int
    layout: Layout
    group_of: str | None = None  # a depthwise Conv whose ``group`` attribute must follow the new channel count


@dataclass
class ChannelPlan:
    layers: dict[str, WeightedLayer]  # producing layers by node name
    edits: list[Edit]
    parent: dict[str, str] = field(default_factory=dict)  # union-find over layer names
    blocked: dict[str, list[str]] = field(default_factory=dict)  # layer -> reasons its group is left alone

    def root(self, layer: str) -> str:
        while self.parent[layer] != layer:
            self.parent[layer] = self.parent[self.parent[layer]]
            layer = self.parent[layer]
        return layer

    def groups(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for layer in self.layers:
            found.setdefault(self.root(layer), []).append(layer)
        return found

    def reasons(self, members: list[str]) -> list[str]:
        return list(dict.fromkeys(r for m in members for r in self.blocked.get(m, [])))


class _Tracer:
    def __init__(self, model: onnx.ModelProto, producers: set[str], excluded: set[str]) -> None:
        self.graph = model.graph
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.producers = producers
        self.excluded = excluded
        self.shapes = _static_shapes(model)
        self.layouts: dict[str, Layout] = {}
        self.plan = ChannelPlan(layers={}, edits=[])

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def block(self, layout: Layout | None, reason: str) -> None:
        for segment in layout.segments if layout else ():
            if segment.layer is not None:
                self.plan.blocked.setdefault(segment.layer, []).append(reason)

    def couple(self, a: Layout, b: Layout, reason: str) -> bool:
        shape_a = [(s.size, s.repeat) for s in a.segments]
        if shape_a != [(s.size, s.repeat) for s in b.segments] or a.axis != b.axis:
            self.block(a, reason)
            self.block(b, reason)
            return False
        for sa, sb in zip(a.segments, b.segments, strict=True):
            if sa.layer is None or sb.layer is None:  # a fixed channel can only meet another fixed one
                self.block(a if sb.layer is None else b, f"{reason}: coupled with channels that cannot be pruned")
            else:
                self.plan.parent[self.plan.root(sa.layer)] = self.plan.root(sb.layer)
        return True

    def add_producer(self, layer: WeightedLayer, size: int, axis: int, rank: int | None) -> Layout:
        node = layer.node
        self.plan.layers[node.name] = layer
        self.plan.parent[node.name] = node.name
        layout = Layout((Segment(node.name, size),), axis, rank)
        self.layouts[node.output[0]] = layout
        return layout

    def edit(self, tensor: str, axis: int, layout: Layout, group_of: str | None = None) -> None:
        self.plan.edits.append(Edit(tensor, axis, layout, group_of))

    def dims(self, name: str) -> list[int | None] | None:
        if name in self.initializers:
            return list(self.initializers[name].dims)
        return self.shapes.get(name)

    # -- the sweep --------------------------------------------------------------------------------------------
    def trace(self) -> ChannelPlan:
        for node in self.graph.node:
            inputs = [self.layouts.get(name) for name in node.input]
            if node.name in self.excluded:
                self.unknown(node, f"{node.op_type} {node.name} is excluded")
            elif node.op_type == "Conv":
                self.conv(node, inputs[0])
            elif node.op_type in ("Gemm", "MatMul"):
                self.dense(node, inputs)
            elif node.op_type == "BatchNormalization":
                self.batchnorm(node, inputs[0])
            elif node.op_type in UNARY_PASSTHROUGH or node.op_type in POOLS:
                self.passthrough(node, inputs)
            elif node.op_type in ELEMENTWISE:
                self.elementwise(node, inputs)
            elif node.op_type in ("Flatten", "Reshape"):
                self.flatten(node, inputs)
            elif node.op_type == "Concat":
                self.concat(node, inputs)
            else:
                self.unknown(node, f"feeds {node.op_type} {node.name}, which optc cannot shrink")
        for output in self.graph.output:
            self.block(self.layouts.get(output.name), f"reaches graph output {output.name!r}")
        self.block_shared_weights()
        return self.plan

    def unknown(self, node: onnx.NodeProto, reason: str) -> None:
        for name in set(names_read(node)):
            self.block(self.layouts.get(name), reason)

    def conv(self, node: onnx.NodeProto, x: Layout | None) -> None:
        layer = weighted_layer(node, self.initializers)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if layer is None or (bias is not None and bias not in self.initializers):
            self.unknown(node, f"Conv {node.name} has no constant weight and bias")
            return
        weight = self.initializers[layer.weight]
        rank = len(weight.dims)
        channel_axis = 1 - rank  # axis 1 of the activation, from the end
        group = int(attribute(node, "group", 1))
        if x is not None and (x.axis != channel_axis or any(s.repeat != 1 for s in x.segments)):
            self.block(x, f"reaches Conv {node.name} on an axis other than its channels")
            x = None
        if group == 1:
            if x is not None:
                self.edit(layer.weight, 1, x)
            if node.name in self.producers:
                out = self.add_producer(layer, weight.dims[0], channel_axis, rank)
                self.edit(layer.weight, 0, out)
                if bias is not None:
                    self.edit(bias, 0, out)
        elif weight.dims[1] == 1 and weight.dims[0] == group and x is not None and x.size == group:
            # Depthwise with one filter per channel: output channel c is input channel c, so the layout passes on.
            self.edit(layer.weight, 0, x, group_of=node.name)
            if bias is not None:
                self.edit(bias, 0, x)
            self.layouts[node.output[0]] = x
        else:
            self.block(x, f"feeds grouped Conv {node.name} (group={group}), whose channel groups are fixed")

    def dense(self, node: onnx.NodeProto, inputs: list[Layout | None]) -> None:
        layer = weighted_layer(node, self.initializers)
        x = inputs[0]
        usable = layer is not None and not (node.op_type == "Gemm" and attribute(node, "transA", 0))
        if not usable or (x is not None and x.axis != -1):
            self.unknown(node, f"feeds {node.op_type} {node.name} on an axis optc cannot shrink")
            return
        if x is not None:
            self.edit(layer.weight, layer.in_axis, x)
        if node.name not in self.producers:
            return
        features = self.initializers[layer.weight].dims[layer.out_axis]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        bias_dims = self.dims(bias) if bias else None
        if bias and (bias not in self.initializers or (bias_dims and bias_dims[-1] not in (1, features))):
            return  # a bias optc cannot follow: the layer still shrinks its input but keeps its outputs
        rank = 2 if node.op_type == "Gemm" else len(self.shapes.get(node.output[0]) or []) or None
        out = self.add_producer(layer, features, -1, rank)
        self.edit(layer.weight, layer.out_axis, out)
        if bias and bias_dims and bias_dims[-1] == features:
            self.edit(bias, -1, out)

    def batchnorm(self, node: onnx.NodeProto, x: Layout | None) -> None:
        if x is None:
            return
        params = list(node.input[1:5])
        if not x.channel_axis_is(1) or not all(p in self.initializers for p in params):
            self.unknown(node, f"feeds BatchNormalization {node.name}, whose parameters optc cannot shrink")
            return
        for param in params:
            self.edit(param, 0, x)
        self.layouts[node.output[0]] = x

    def passthrough(self, node: onnx.NodeProto, inputs: list[Layout | None]) -> None:
        x, rest = inputs[0], inputs[1:]
        if any(rest) or (x is not None and node.op_type in POOLS and not x.channel_axis_is(1)):
            self.unknown(node, f"feeds {node.op_type} {node.name} in a way optc cannot follow")
        elif x is not None:
            self.layouts[node.output[0]] = x

    def elementwise(self, node: onnx.NodeProto, inputs: list[Layout | None]) -> None:
        laid = [layout for layout in inputs if layout is not None]
        if not laid:
            return
        first = laid[0]
        reason = f"meets differently shaped channels in {node.op_type} {node.name}"
        if not all(self.couple(first, other, reason) for other in laid[1:]):
            return
        for name, layout in zip(node.input, inputs, strict=True):
            if layout is not None:
                continue
            dims = self.dims(name)
            position = len(dims) + first.axis if dims is not None else None
            if dims is not None and (position < 0 or dims[position] == 1):
                continue  # broadcast along the channels: nothing to shrink
            if name in self.initializers and dims[position] == first.size:
                self.edit(name, position, first)
            else:
                self.unknown(node, f"{node.op_type} {node.name} combines the channels with {name!r}")
                return
        self.layouts[node.output[0]] = first

    def flatten(self, node: onnx.NodeProto, inputs: list[Layout | None]) -> None:
        x = inputs[0]
        if x is None:
            return
        dims = self.dims(node.input[0])
        spatial = dims[2:] if dims else None
        if (
            not self.flattens_from_axis_1(node)
            or not x.channel_axis_is(1)
            or spatial is None
            or not all(isinstance(d, int) and d > 0 for d in spatial)
        ):
            self.unknown(node, f"feeds {node.op_type} {node.name}, which optc can only follow as a Flatten(axis=1) "
                         "of a tensor with a known spatial size")  # fmt: skip
            return
        repeat = int(np.prod(spatial))
        segments = tuple(Segment(s.layer, s.size, s.repeat * repeat) for s in x.segments)
        self.layouts[node.output[0]] = Layout(segments, -1, 2)

    def flattens_from_axis_1(self, node: onnx.NodeProto) -> bool:
        if node.op_type == "Flatten":
            return int(attribute(node, "axis", 1)) == 1
        target = self.initializers.get(node.input[1])  # Reshape(x, [0 or N, -1]) is the same Flatten
        if target is None:
            return False
        shape = onnx.numpy_helper.to_array(target).tolist()
        batch = (self.dims(node.input[0]) or [None])[0]
        return len(shape) == 2 and shape[1] == -1 and shape[0] in (0, batch)

    def concat(self, node: onnx.NodeProto, inputs: list[Layout | None]) -> None:
        if not any(inputs):
            return
        ranks = {layout.rank for layout in inputs if layout is not None} | {
            len(self.dims(n) or []) or None for n, layout in zip(node.input, inputs, strict=True) if layout is None
        }
        axis = int(attribute(node, "axis", 0))
        rank = next(iter(ranks)) if len(ranks) == 1 else None
        segments: list[Segment] = []
        for name, layout in zip(node.input, inputs, strict=True):
            dims = self.dims(name)
            on_axis = rank is not None and (axis if axis >= 0 else axis + rank)
            if layout is not None and rank is not None and layout.channel_axis_is(on_axis):
                segments.extend(layout.segments)
            elif layout is None and dims is not None and rank is not None and isinstance(dims[on_axis], int):
                segments.append(Segment(None, dims[on_axis]))
            else:
                self.unknown(node, f"feeds Concat {node.name} along an axis other than the channels")
                return
        self.layouts[node.output[0]] = Layout(tuple(segments), axis - rank if axis >= 0 else axis, rank)

    def block_shared_weights(self) -> None:
        """A weight read by two nodes cannot be shrunk for one of them only."""
        readers: dict[str, int] = {}
        for node in self.graph.node:
            for name in set(names_read(node)):
                readers[name] = readers.get(name, 0) + 1
        for edit in self.plan.edits:
            if readers.get(edit.tensor, 0) > 1:
                self.block(edit.layout, f"initializer {edit.tensor!r} is shared by several nodes")


def trace_channels(model: onnx.ModelProto, producers: set[str], excluded: set[str]) -> ChannelPlan:
    """Which layers' output channels can be removed together, and every weight edit that removal implies.

    ``producers`` are the layers whose outputs may be pruned; ``excluded`` nodes are not touched at all.
    """
    return _Tracer(model, producers, excluded).trace()


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    graph = inferred.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return shapes
