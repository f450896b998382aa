"""Trace which tensors carry which layer's output channels, and which layers are coupled and must be pruned together.

One sweep over the (topologically sorted) graph gives every tensor that carries prunable channels a ``Layout``: the
layers whose channels it holds, in order, along one axis. Channel-preserving ops (elementwise functions, BatchNorm,
pooling, depthwise Conv) pass a layout on; ops that only move or drop other axes (Transpose, Squeeze, Unsqueeze, a
reduction, Softmax, Slice, Pad or Resize along other axes) pass it on at the channels' new position; Add/Mul and friends
couple the layouts they combine (a residual block's layers become one group); Concat joins layouts; Flatten spreads
each channel over its H×W features. Every weight whose axis follows a layout is recorded as an ``Edit``. Anything optc
cannot follow (a general Reshape, a Shape, a graph output, a grouped Conv, an op over the channels, ...) blocks the
layers whose channels reach it, with the reason: those groups are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from optc.model_facts import attribute, default_opset, reader_counts
from optc.passes.prune.layers import WeightedLayer, weighted_layer
from optc.passes.prune.outputs import names_read
from optc.tensors import tensor_values

UNARY_PASSTHROUGH = frozenset(
    {
        "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
        "Softsign", "Identity", "Dropout", "Erf", "Gelu", "Neg", "Abs", "Sqrt", "Exp", "Mish", "Log", "Reciprocal",
        "Floor", "Ceil", "Round", "Sign", "Cast", "Not", "ThresholdedRelu", "Shrink",
    }
)  # fmt: skip
POOLS = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
ELEMENTWISE = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow", "Where", "Equal", "Greater", "Less",
        "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor",
    }
)  # fmt: skip
REDUCTIONS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
        "ReduceLogSumExp", "ReduceSumSquare",
    }
)  # fmt: skip
SOFTMAXES = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


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
    count_at: int | None = None  # a Reshape target: write the kept channel count at this index instead of cutting
    reader: WeightedLayer | None = None  # the Conv (group 1), Gemm or MatMul whose input channels this cut removes


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
        self.opset = default_opset(model)
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

    def edit(
        self,
        tensor: str,
        axis: int,
        layout: Layout,
        group_of: str | None = None,
        count_at: int | None = None,
        reader: WeightedLayer | None = None,
    ) -> None:
        self.plan.edits.append(Edit(tensor, axis, layout, group_of, count_at, reader))

    def dims(self, name: str) -> list[int | None] | None:
        if name in self.initializers:
            return list(self.initializers[name].dims)
        return self.shapes.get(name)

    def constant_ints(self, node: onnx.NodeProto, attr: str, position: int) -> list[int] | None:
        """An int list given as attribute ``attr`` (older opsets) or as constant input ``position`` (newer ones)."""
        value = attribute(node, attr)
        if value is not None:
            return [int(v) for v in value]
        name = node.input[position] if len(node.input) > position else ""
        if name in self.initializers:
            return [int(v) for v in tensor_values(self.initializers[name]).reshape(-1)]
        return None

    def move(self, node: onnx.NodeProto, x: Layout, position: int | None, rank: int | None, reason: str) -> None:
        """Pass ``x`` on to the node's output with the channels at ``position`` of a tensor of ``rank``; None: the
        node acts on the channels themselves, so it blocks them."""
        if position is None or rank is None:
            self.unknown(node, reason)
        else:
            self.layouts[node.output[0]] = Layout(x.segments, position - rank, rank)

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
            elif node.op_type == "ConvTranspose":
                self.conv_transpose(node, inputs)
            elif node.op_type in self.axis_movers and inputs and inputs[0] and inputs[0].rank and not any(inputs[1:]):
                self.axis_movers[node.op_type](self, node, inputs[0])
            else:
                self.unknown(node, f"feeds {node.op_type} {node.name}, which optc cannot shrink")
        for output in self.graph.output:
            self.block(self.layouts.get(output.name), f"reaches graph output {output.name!r}")
        self.couple_shared_producers()
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
                self.edit(layer.weight, 1, x, reader=layer)
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
            self.edit(layer.weight, layer.in_axis, x, reader=layer)
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
            if not (node.op_type == "Reshape" and self.reshape_keeping_channels(node, x)):
                self.unknown(node, f"feeds {node.op_type} {node.name}, which optc can only follow as a Flatten(axis=1) "
                             "of a known spatial size or a Reshape keeping the channel axis whole")  # fmt: skip
            return
        repeat = int(np.prod(spatial))
        segments = tuple(Segment(s.layer, s.size, s.repeat * repeat) for s in x.segments)
        self.layouts[node.output[0]] = Layout(segments, -1, 2)

    def reshape_keeping_channels(self, node: onnx.NodeProto, x: Layout) -> bool:
        """A Reshape with a constant target that leaves the channel axis whole, as [N, T, C] → [N·T, C] or
        [N, C, 1, 1] → [N, 1, 1, C]: row-major order keeps each channel apart when some output axis has the channels'
        size and the same known number of elements after it. An explicit channel count in the target is rewritten."""
        target = self.initializers.get(node.input[1])
        dims_in, dims_out = self.dims(node.input[0]), self.dims(node.output[0])
        if target is None or not dims_in or not dims_out or x.rank != len(dims_in):
            return False
        channel, shape = x.axis + x.rank, [int(v) for v in tensor_values(target).reshape(-1)]
        inner = dims_in[channel + 1 :]
        if any(s.repeat != 1 for s in x.segments) or dims_in[channel] != x.size or None in inner:
            return False
        position = next(
            (
                k
                for k in reversed(range(len(dims_out)))
                if dims_out[k] == x.size and None not in dims_out[k + 1 :]
                and int(np.prod(dims_out[k + 1 :])) == int(np.prod(inner))
            ),
            None,
        )  # fmt: skip
        if position is None or len(shape) != len(dims_out):
            return False
        copied = shape[position] == 0 or (channel < len(shape) and shape[channel] == 0)
        if copied and position != channel:  # a 0 copies the input dim at its own index
            return False
        if shape[position] == x.size:
            self.edit(target.name, 0, x, count_at=position)
        elif shape[position] not in (-1, 0):
            return False
        self.layouts[node.output[0]] = Layout(x.segments, position - len(dims_out), len(dims_out))
        return True

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
        laid = [layout for layout in inputs if layout is not None]
        if rank is not None and all(layout.rank == rank and not layout.channel_axis_is(axis % rank) for layout in laid):
            self.concat_beside(node, inputs, laid[0])
            return
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

    def concat_beside(self, node: onnx.NodeProto, inputs: list[Layout | None], first: Layout) -> None:
        """Concat along another axis (time steps, tokens): every input must hold the same channels."""
        reason = f"meets differently shaped channels in Concat {node.name}"
        if not all(self.couple(first, other, reason) for other in inputs if other is not None and other is not first):
            return
        for name, layout in zip(node.input, inputs, strict=True):
            dims = self.dims(name)
            if layout is None and name in self.initializers and dims[first.axis] == first.size:
                self.edit(name, len(dims) + first.axis, first)
            elif layout is None:
                self.unknown(node, f"Concat {node.name} joins the channels with {name!r}")
                return
        self.layouts[node.output[0]] = first

    def conv_transpose(self, node: onnx.NodeProto, inputs: list[Layout | None]) -> None:
        """Input channels only: they index axis 0 of a ConvTranspose weight (its outputs are not a pruned layer)."""
        x, weight = inputs[0], self.initializers.get(node.input[1])
        if x is None or any(inputs[1:]):
            self.unknown(node, f"feeds ConvTranspose {node.name} in a way optc cannot follow")
        elif weight is None or int(attribute(node, "group", 1)) != 1 or not x.channel_axis_is(1):
            self.block(x, f"feeds ConvTranspose {node.name}, whose weight is not constant or is grouped")
        elif any(s.repeat != 1 for s in x.segments):
            self.block(x, f"reaches ConvTranspose {node.name} on an axis other than its channels")
        else:
            self.edit(weight.name, 0, x)

    # Ops that keep each channel's values apart and only move, drop or resize the other axes: each finds where the
    # channels sit in its output, or blocks them where it reaches across the channels or its axes are not constant.
    def reduction(self, node: onnx.NodeProto, x: Layout) -> None:
        rank, channel = x.rank, x.axis + x.rank
        axes = self.constant_ints(node, "axes", 1)
        if axes is None and len(node.input) > 1 and node.input[1]:
            self.unknown(node, f"feeds {node.op_type} {node.name} without constant axes")
            return
        if not axes and attribute(node, "noop_with_empty_axes", 0):
            self.layouts[node.output[0]] = x
            return
        reduced = {a % rank for a in axes} if axes else set(range(rank))
        keep = int(attribute(node, "keepdims", 1))
        position = None if channel in reduced else channel - (0 if keep else sum(a < channel for a in reduced))
        self.move(node, x, position, rank if keep else rank - len(reduced), f"{node.op_type} {node.name} reduces "
                  "over the channels")  # fmt: skip

    def transpose(self, node: onnx.NodeProto, x: Layout) -> None:
        perm = attribute(node, "perm") or list(reversed(range(x.rank)))
        self.move(node, x, list(perm).index(x.axis + x.rank), x.rank, f"feeds Transpose {node.name}")

    def squeeze(self, node: onnx.NodeProto, x: Layout) -> None:
        channel = x.axis + x.rank
        axes = self.constant_ints(node, "axes", 1)
        if axes is None:  # every axis of size 1: only known from the shape
            dims = self.dims(node.input[0])
            axes = [i for i, d in enumerate(dims) if d == 1] if dims and None not in dims else None
        if axes is None:
            self.unknown(node, f"feeds Squeeze {node.name} without known axes")
            return
        squeezed = {a % x.rank for a in axes}
        position = None if channel in squeezed else channel - sum(a < channel for a in squeezed)
        self.move(node, x, position, x.rank - len(squeezed), f"Squeeze {node.name} removes the channel axis")

    def unsqueeze(self, node: onnx.NodeProto, x: Layout) -> None:
        axes = self.constant_ints(node, "axes", 1)
        if axes is None:
            self.unknown(node, f"feeds Unsqueeze {node.name} without constant axes")
            return
        rank = x.rank + len(axes)
        inserted = {a % rank for a in axes}
        kept_positions = [i for i in range(rank) if i not in inserted]
        self.move(node, x, kept_positions[x.axis + x.rank], rank, f"feeds Unsqueeze {node.name}")

    def softmax(self, node: onnx.NodeProto, x: Layout) -> None:
        channel = x.axis + x.rank
        # Before opset 13 Softmax flattened the input to 2-D at `axis` (default 1) and normalised the whole tail.
        if self.opset < 13:
            apart = channel < int(attribute(node, "axis", 1)) % x.rank
        else:
            apart = channel != int(attribute(node, "axis", -1)) % x.rank
        self.move(node, x, channel if apart else None, x.rank, f"{node.op_type} {node.name} normalises over the "
                  "channels")  # fmt: skip

    def slice(self, node: onnx.NodeProto, x: Layout) -> None:
        channel = x.axis + x.rank
        if self.opset < 10:
            starts, axes = attribute(node, "starts"), attribute(node, "axes")
        else:
            starts = self.constant_ints(node, "", 1)
            axes = self.constant_ints(node, "", 3) if len(node.input) > 3 and node.input[3] else None
        if axes is None and starts is not None:  # no axes: the first len(starts) axes
            axes = list(range(len(starts)))
        position = None if axes is None or channel in {a % x.rank for a in axes} else channel
        self.move(node, x, position, x.rank, f"Slice {node.name} cuts along the channels or has no constant axes")

    def pad(self, node: onnx.NodeProto, x: Layout) -> None:
        channel = x.axis + x.rank
        pads = self.constant_ints(node, "pads", 1)
        axes = self.constant_ints(node, "", 3) if len(node.input) > 3 and node.input[3] else list(range(x.rank))
        if pads is None or len(pads) != 2 * len(axes):
            self.unknown(node, f"feeds Pad {node.name} without constant pads")
            return
        cut = len(axes)
        padded = {a % x.rank for a, b, e in zip(axes, pads[:cut], pads[cut:], strict=True) if b or e}
        self.move(node, x, None if channel in padded else channel, x.rank, f"Pad {node.name} pads the channels")

    def resize(self, node: onnx.NodeProto, x: Layout) -> None:
        channel = x.axis + x.rank
        scale_input = 1 if node.op_type == "Upsample" or self.opset < 11 else 2
        scales = node.input[scale_input] if len(node.input) > scale_input else ""
        sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
        factors = tensor_values(self.initializers[scales]).reshape(-1) if scales in self.initializers else None
        axes = attribute(node, "axes") or list(range(x.rank))
        resized = (
            {a % x.rank for a, f in zip(axes, factors, strict=False) if f != 1}
            if factors is not None and len(factors) and not sizes
            else None
        )  # sizes fix every listed axis's length, the channels' too
        position = None if resized is None or channel in resized else channel
        self.move(node, x, position, x.rank, f"{node.op_type} {node.name} resizes the channels or has no constant "
                  "scales")  # fmt: skip

    axis_movers: dict = {
        **dict.fromkeys(REDUCTIONS, reduction),
        **dict.fromkeys(SOFTMAXES, softmax),
        "Transpose": transpose,
        "Squeeze": squeeze,
        "Unsqueeze": unsqueeze,
        "Slice": slice,
        "Pad": pad,
        "Resize": resize,
        "Upsample": resize,
    }

    def couple_shared_producers(self) -> None:
        """Layers that apply one weight tensor (a siamese network's two branches, an RNN's time steps) keep the same
        channels: their output channels are one group."""
        by_weight: dict[tuple[str, int], str] = {}
        for name, layer in self.plan.layers.items():
            first = by_weight.setdefault((layer.weight, layer.out_axis), name)
            self.plan.parent[self.plan.root(name)] = self.plan.root(first)

    def block_shared_weights(self) -> None:
        """A weight read by several nodes (an unrolled RNN's time steps) shrinks only if every reader cuts it the same
        way: one edit then stands for all. Otherwise it cannot be shrunk for some readers only."""
        readers = reader_counts(self.graph)
        by_cut: dict[tuple[str, int], list[Edit]] = {}
        for edit in self.plan.edits:
            by_cut.setdefault((edit.tensor, edit.axis % len(self.initializers[edit.tensor].dims)), []).append(edit)
        kept = []
        for (tensor, _), edits in by_cut.items():
            if readers[tensor] <= 1:
                kept.extend(edits)
                continue
            cuts = {(e.group_of, e.count_at, self.signature(e.layout)) for e in edits}
            if len(edits) == readers[tensor] and len(cuts) == 1:
                kept.append(edits[0])
                continue
            for edit in edits:
                self.block(edit.layout, f"initializer {edit.tensor!r} is shared by nodes that would cut it differently")
            kept.extend(edits)
        self.plan.edits = kept

    def signature(self, layout: Layout) -> tuple:
        roots = (self.plan.root(s.layer) if s.layer is not None else None for s in layout.segments)
        return layout.axis, tuple((root, s.size, s.repeat) for root, s in zip(roots, layout.segments, strict=True))


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
