from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optc.data import Dataset
from optc.errors import OptcError, PassError
from optc.model_facts import op_histogram
from optc.passes.exclude import ExcludeSpec
from optc.passes.quantize import QuantizeConfig, run_quantize
from optc.passes.quantize_prepare import gemm_to_matmul
from optc.passes.registry import PassContext
from tests.conftest import mlp_model, relu_model


def context(tmp_path: Path) -> PassContext:
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    return PassContext(
        label="passes[0] quantize (dynamic)",
        workdir=tmp_path,
        seed=0,
        dataset=Dataset(inputs={"x": x}, labels=None, source="synthetic"),
    )


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def config(**fields) -> QuantizeConfig:
    return QuantizeConfig(type="quantize", mode="dynamic", **fields)


def test_dynamic_quantization_shrinks_and_keeps_outputs_close(tmp_path: Path):
    model = mlp_model()
    outcome = run_quantize(model, config(), context(tmp_path))
    ops = op_histogram(outcome.model)
    assert ops.get("MatMulInteger") == 2  # the MatMul and the rewritten Gemm
    assert "Gemm" not in ops
    assert outcome.details["ops_quantized"] == 2
    assert outcome.model.ByteSize() < model.ByteSize() * 0.6
    feed = {"x": np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)}
    expected, got = run(model, feed), run(outcome.model, feed)
    assert np.abs(expected - got).max() < 0.05 * np.abs(expected).max()


def test_excluded_node_stays_in_float(tmp_path: Path):
    outcome = run_quantize(mlp_model(), config(exclude=ExcludeSpec(nodes=["fc"])), context(tmp_path))
    ops = op_histogram(outcome.model)
    assert ops.get("MatMulInteger") == 1
    assert "Gemm" not in ops and ops.get("MatMul") == 1  # the excluded Gemm stays float, as MatMul + Add
    assert {"node": "fc", "op_type": "MatMul", "reason": "exclude"} in outcome.details["kept_in_float"]


def test_exclusion_that_matches_nothing_is_an_error(tmp_path: Path):
    with pytest.raises(OptcError, match=r"exclude.nodes: no node named 'fc2'"):
        run_quantize(mlp_model(), config(exclude=ExcludeSpec(nodes=["fc2"])), context(tmp_path))
    with pytest.raises(OptcError, match="matches no node"):
        run_quantize(mlp_model(), config(exclude=ExcludeSpec(patterns=["^conv"])), context(tmp_path))


def test_a_model_with_nothing_to_quantize_is_refused_as_bad_input(tmp_path: Path):
    with pytest.raises(OptcError, match="nothing to quantize") as info:
        run_quantize(relu_model(), config(), context(tmp_path))
    assert not isinstance(info.value, PassError)


def test_excluding_every_candidate_is_a_pass_failure(tmp_path: Path):
    with pytest.raises(PassError, match="stayed in float"):
        run_quantize(mlp_model(), config(exclude=ExcludeSpec(nodes=["mm1", "fc"])), context(tmp_path))


def test_already_quantized_model_is_refused(tmp_path: Path):
    quantized = run_quantize(mlp_model(), config(), context(tmp_path)).model
    with pytest.raises(OptcError, match="already quantized") as info:
        run_quantize(quantized, config(), context(tmp_path))
    assert not isinstance(info.value, PassError)  # bad input: exit 2, not a pass failure


def test_gemm_to_matmul_is_exact():
    model = mlp_model()
    rewritten = gemm_to_matmul(model)
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    assert rewritten.graph.node[3].name == "fc"
    onnx.checker.check_model(rewritten)
    feed = {"x": np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)}
    np.testing.assert_allclose(run(model, feed), run(rewritten, feed), rtol=1e-5, atol=1e-5)
    assert [n.op_type for n in model.graph.node][-1] == "Gemm"  # the input model is untouched
