"""constant_weight_inputs: initializers also listed as graph inputs become plain constants.

Exports written for IR version 3 list every weight as a graph input as well, which makes it overridable: ONNX Runtime
warns that it "will not be treated as constant value/weight" and skips constant folding and weight pre-packing for
it, and no rewrite here may fold it either. Nobody feeds a model its weights, so the inputs go and the initializers
stay (what ONNX Runtime's ``remove_initializer_from_input.py`` and onnxslim do). The model's IR version is raised to
4 where it was lower, since IR 3 requires the listing.
"""

from __future__ import annotations

import onnx

from optc.passes.fuse.driver import rewrite
from optc.passes.fuse.graph import copy_model


@rewrite("constant_weight_inputs", "initializers listed as graph inputs made constants")
def constant_weight_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    initializers = {t.name for t in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in initializers]
    if not listed:
        return model, 0
    model = copy_model(model)
    kept = [i for i in model.graph.input if i.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)
    return model, len(listed)
