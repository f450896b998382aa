"""constant_weight_inputs: initializers also listed as graph inputs become plain constants.

Exports written for IR version 3 list every weight as a graph input as well, which makes it overridable: ONNX Runtime
warns that it "will not be treated as constant value/weight" and skips constant folding and weight pre-packing for
it, and no rewrite here may fold it either. Nobody feeds a model its weights, so the inputs go and the initializers
stay (what ONNX Runtime's ``remove_initializer_from_input.py`` and onnxslim do), as static int8 already prepares its
input (``quantize_prepare.drop_initializer_inputs``, which this registers as a rewrite).
"""

from __future__ import annotations

from optc.passes.fuse.driver import rewrite
from optc.passes.quantize_prepare import drop_initializer_inputs

constant_weight_inputs = rewrite("constant_weight_inputs", "initializers listed as graph inputs made constants")(
    drop_initializer_inputs
)
