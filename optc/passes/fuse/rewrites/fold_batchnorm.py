"""fold_batchnorm: an inference BatchNormalization after a Conv, ConvTranspose or Gemm becomes part of its weights.

At inference BatchNorm is ``y * gamma / sqrt(var + eps) + (beta - mean * gamma / sqrt(var + eps))`` per channel.
It must be the only reader of the producer's output: another reader would see the scaled values.
"""

from __future__ import annotations

import numpy as np
import onnx

from optc.passes.fuse.channel_affine import fold_affine, output_channels
from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import GraphIndex, attribute, copy_model, is_standard


@rewrite("fold_batchnorm", "BatchNormalization folded into the preceding Conv/ConvTranspose/Gemm")
def fold_batchnorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    model = copy_model(model)
    index = GraphIndex(model)
    applied = 0
    touched: set[str] = set()
    for node in list(model.graph.node):
        if node.op_type != "BatchNormalization" or not is_standard(node) or len(node.output) != 1:
            continue
        if attribute(node, "training_mode", 0):
            continue
        producer = index.producers.get(node.input[0])
        if producer is None or producer.name in touched or index.sole_consumer(node.input[0]) is not node:
            continue
        found = output_channels(index, producer)
        params = [index.const(name) for name in node.input[1:5]]
        if found is None or any(p is None for p in params):
            continue
        channels, _ = found
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        if gamma.shape != (channels,):
            continue
        scale = gamma / np.sqrt(var + attribute(node, "epsilon", 1e-5))
        if not index.absorb(node, producer.output[0]):  # the folded producer now writes the BatchNorm's output
            continue
        fold_affine(index, producer, scale, beta - mean * scale)
        touched.add(producer.name)
        applied += 1
    return model, applied
