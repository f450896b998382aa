"""``method: outputs`` keeps the named graph outputs and drops exactly what fed only the others."""

from __future__ import annotations

import numpy as np
import prune_graphs as graphs
import pytest

from optc.errors import OptcError
from optc.passes.prune.config import PruneConfig
from optc.passes.prune.outputs import keep_outputs
from optc.passes.prune.run import run_prune


def test_keeping_one_output_drops_exactly_the_nodes_and_inputs_only_the_other_used():
    model = graphs.two_outputs()
    result = keep_outputs(model, ["out1"])
    assert [n.name for n in result.model.graph.node] == ["relu", "neg"]
    assert result.removed_nodes == ["exp", "abs", "sum"]
    assert result.removed_outputs == ["out2"] and result.removed_inputs == ["z"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    (out1,) = graphs.run(result.model, {"x": x})
    np.testing.assert_array_equal(out1, graphs.run(model, {"x": x, "z": x})[0])


def test_keeping_every_output_changes_nothing():
    result = keep_outputs(graphs.two_outputs(), ["out1", "out2"])
    assert result.removed_nodes == [] and result.removed_inputs == []


def test_unknown_output_name_is_refused_with_the_names_there_are(tmp_path):
    config = PruneConfig(type="prune", method="outputs", keep=["logits"])
    with pytest.raises(OptcError, match=r"keep: the model has no output named 'logits'") as error:
        run_prune(graphs.two_outputs(), config, graphs.pass_context(tmp_path, "outputs"))
    assert error.value.hint == "its outputs: out1, out2"
