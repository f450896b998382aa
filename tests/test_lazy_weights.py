"""Weights that stay on disk: a model with external data is loaded as references, read tensor by tensor, written
by copying, and measured one session at a time when large."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from optc.cli import app
from optc.errors import OptcError
from optc.measure import pair
from optc.measure.values import cut_feeds
from optc.modelio import adopt_model, load_model, write_model
from optc.passes import calibration
from optc.passes.calibration import MinMaxCollector, calibrate, tensors_to_calibrate
from optc.passes.fp16 import store_kept_weights_fp16
from optc.passes.prune.config import PruneConfig
from optc.passes.prune.layers import selected_layers
from optc.passes.prune.magnitude import prune_magnitude
from optc.passes.prune.search import gzip_size
from optc.tensors import has_lazy_tensors, is_lazy, tensor_values
from tests.conftest import report_of, wide_mlp, write_fast_recipe


def save_external(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data", size_threshold=0)
    return path


@pytest.fixture
def external_mlp(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    return save_external(wide_mlp(), tmp_path / "in" / "mlp.onnx")


def test_large_external_weights_stay_on_disk_and_read_back_exactly(external_mlp: Path):
    model = load_model(external_mlp).model
    by_name = {t.name: t for t in model.graph.initializer}
    assert is_lazy(by_name["W1"]) and is_lazy(by_name["W2"])
    assert not is_lazy(by_name["b1"])  # 1 kB: read at load
    assert model.ByteSize() < 10_000  # the protobuf holds references, not 130 kB of weights
    original = {t.name: numpy_helper.to_array(t) for t in wide_mlp().graph.initializer}
    for name in ("W1", "W2", "b1"):
        np.testing.assert_array_equal(tensor_values(by_name[name]), original[name])


def test_a_model_with_lazy_weights_is_written_whole_and_self_contained(external_mlp: Path, tmp_path: Path):
    model = load_model(external_mlp).model
    before = external_mlp.with_name("mlp.onnx.data").read_bytes()
    out = tmp_path / "out" / "copy.onnx"
    out.parent.mkdir()
    written = write_model(model, out)
    assert written == [out.with_name("copy.onnx.data"), out]
    assert external_mlp.with_name("mlp.onnx.data").read_bytes() == before  # the input is never touched
    external_mlp.with_name("mlp.onnx.data").unlink()  # the copy must not need the input's files
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(wide_mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], reference.run(None, {"x": x})[0], rtol=1e-6)


@pytest.mark.parametrize(
    ("key", "value", "message"), [("length", "12", "bytes of data"), ("offset", "10000000", "reads")]
)
def test_external_data_that_does_not_match_its_tensor_is_refused(external_mlp: Path, key, value, message):
    model = onnx.load_model(str(external_mlp), load_external_data=False)
    entries = model.graph.initializer[0].external_data
    kept = [e for e in entries if e.key != key]
    del entries[:]
    entries.extend(kept)
    entries.add(key=key, value=value)
    external_mlp.write_bytes(model.SerializeToString())
    with pytest.raises(OptcError, match=message):
        load_model(external_mlp)


def test_an_adopted_tool_output_keeps_its_weights_when_the_tool_writes_again(tmp_path: Path):
    path = save_external(wide_mlp(seed=0), tmp_path / "tool_out.onnx")
    adopted = adopt_model(path)
    save_external(wide_mlp(seed=1), tmp_path / "tool_out.onnx")  # the same names, other weights
    w1 = next(t for t in adopted.graph.initializer if t.name == "W1")
    np.testing.assert_array_equal(tensor_values(w1), numpy_helper.to_array(wide_mlp(seed=0).graph.initializer[0]))


def test_feeds_are_cut_only_where_the_batch_axis_is_symbolic():
    session = ort.InferenceSession(wide_mlp().SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": np.zeros((5, 64), np.float32)}
    assert [len(f["x"]) for f in cut_feeds([feed], session, 2)] == [2, 2, 1]
    assert [len(f["x"]) for f in cut_feeds([feed], session, None)] == [5]
    fixed = wide_mlp()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 5
    fixed_session = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [len(f["x"]) for f in cut_feeds([feed], fixed_session, 2)] == [5]


def test_calibration_cut_into_small_runs_finds_the_same_ranges(tmp_path: Path, monkeypatch):
    model = wide_mlp()
    tensors = tensors_to_calibrate(model, None)
    batches = [{"x": np.random.default_rng(i).standard_normal((8, 64)).astype(np.float32)} for i in range(3)]
    whole = calibrate(model, tensors, batches, MinMaxCollector(False, 0.01), tmp_path)
    monkeypatch.setattr(calibration, "CALIBRATION_RUN_BYTES", 1)  # one sample per run
    cut = calibrate(model, tensors, batches, MinMaxCollector(False, 0.01), tmp_path)
    assert cut.samples == whole.samples == 24
    assert cut.ranges.keys() == whole.ranges.keys()
    for name, (low, high) in whole.ranges.items():
        assert cut.ranges[name] == pytest.approx((low, high), rel=1e-6)


def compress_json(runner, model: Path, out: Path, recipe: Path) -> dict:
    result = runner.invoke(app, ["compress", str(model), "--recipe", str(recipe), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads(report_of(out).read_text())


@pytest.mark.parametrize(
    "passes",
    [
        "  - type: fuse\n",
        "  - type: quantize\n    mode: dynamic\n",
        "  - type: quantize\n    mode: weight_only\n    weights: {bits: 4, block_size: 32, eight_bit: none}\n",
        "  - type: fp16\n",
    ],
)
def test_every_pass_family_takes_a_model_whose_weights_stay_on_disk(external_mlp, tmp_path, runner, passes):
    recipe = write_fast_recipe(tmp_path, passes)
    out = tmp_path / "out" / "model.onnx"
    report = compress_json(runner, external_mlp, out, recipe)
    data = out.with_name("model.onnx.data")
    # Weights a pass left alone are copied into the output's own data file; rewritten ones are small enough inline.
    assert data.exists() == passes.endswith("fuse\n")
    assert report["optimized"]["size_bytes"] == out.stat().st_size + (data.stat().st_size if data.exists() else 0)
    assert not has_lazy_tensors(onnx.load_model(str(out), load_external_data=False))
    assert report["measurements"][0]["accuracy"]["outputs"][0]["cosine"] > 0.99
    assert report["measurements"][0]["interleaved"] is True


def test_models_too_large_to_hold_twice_are_measured_one_session_at_a_time(external_mlp, tmp_path, runner, monkeypatch):
    monkeypatch.setattr(pair, "TOGETHER_LIMIT_BYTES", 0)
    recipe = write_fast_recipe(tmp_path, "  - type: quantize\n    mode: dynamic\n")
    report = compress_json(runner, external_mlp, tmp_path / "out.onnx", recipe)
    cpu = report["measurements"][0]
    assert cpu["interleaved"] is False
    assert cpu["accuracy"]["outputs"][0]["cosine"] > 0.99
    assert cpu["original"]["runs"] >= 3 and cpu["optimized"]["runs"] >= 3
    assert any("one session at a time" in w for w in report["warnings"])
    assert "one session at a time" in report_of(tmp_path / "out.onnx", ".md").read_text()


@pytest.mark.parametrize(
    "passes",
    ["  - type: fp16\n", "  - type: prune\n    method: magnitude\n    sparsity: 0.5\n    dense_first_last: false\n"],
)
def test_weights_rewritten_from_disk_match_weights_rewritten_in_memory(external_mlp, tmp_path, runner, passes):
    """fp16 and magnitude pruning rewrite weights still on disk one at a time, into a scratch file (the fp16
    converter only retypes them): the result must be what the same pass makes of the model held in memory."""
    inline = tmp_path / "inline.onnx"
    onnx.save_model(onnx.load_model(str(external_mlp)), str(inline))
    assert has_lazy_tensors(load_model(external_mlp).model)
    recipe = write_fast_recipe(tmp_path, passes)
    written = {}
    for source in (external_mlp, inline):
        out = tmp_path / f"out_{source.stem}_{source.parent.name}" / "model.onnx"
        result = runner.invoke(app, ["compress", str(source), "-r", str(recipe), "-o", str(out), "--min-cosine", "-1"])
        assert result.exit_code == 0, result.output
        written[source] = {t.name: numpy_helper.to_array(t) for t in onnx.load_model(str(out)).graph.initializer}
    from_disk, from_memory = written[external_mlp], written[inline]
    assert from_disk.keys() == from_memory.keys()
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load_model(str(inline)).graph.initializer}
    assert any(not np.array_equal(from_disk[name], values) for name, values in original.items())  # it rewrote
    for name, values in from_memory.items():
        assert from_disk[name].dtype == values.dtype
        np.testing.assert_array_equal(from_disk[name], values)


def test_magnitude_pruning_keeps_weights_on_disk_and_prunes_them_as_in_memory(external_mlp, tmp_path):
    lazy = load_model(external_mlp).model
    inline = onnx.load_model(str(external_mlp))
    config = PruneConfig(type="prune", method="magnitude", sparsity=0.5, dense_first_last=False)
    layers = selected_layers(lazy.graph, config, "p")
    from_disk, _ = prune_magnitude(lazy, layers, 0.5, "per_layer", tmp_path / "pruned.data")
    from_memory, _ = prune_magnitude(inline, layers, 0.5, "per_layer", tmp_path / "unused.data")
    assert any(is_lazy(t) for t in from_disk.graph.initializer)  # written back to disk, not held
    assert not (tmp_path / "unused.data").exists()
    for disk, memory in zip(from_disk.graph.initializer, from_memory.graph.initializer, strict=True):
        np.testing.assert_array_equal(tensor_values(disk), numpy_helper.to_array(memory))
    # The gzip figure reads weights on disk rather than measuring their references.
    assert gzip_size(from_disk) == gzip_size(from_memory) < gzip_size(inline)


def test_fp32_weights_stored_in_fp16_from_disk_stay_on_disk_and_match_those_from_memory(external_mlp, tmp_path):
    """fp16 stores the weights of nodes left in fp32 as fp16 copies: a weight still on disk gets its copy on disk
    (the scratch file), with the values the same weight held in memory gets."""
    lazy = load_model(external_mlp).model
    inline = onnx.load_model(str(external_mlp))
    from_disk, names = store_kept_weights_fp16(lazy, tmp_path / "scratch.data", set())
    from_memory, same_names = store_kept_weights_fp16(inline, tmp_path / "unused.data", set())
    assert names == same_names and names  # the MatMul weights (the 1 kB bias is under the size limit)
    disk = {t.name: t for t in from_disk.graph.initializer}
    memory = {t.name: t for t in from_memory.graph.initializer}
    for name in names:
        on_disk, in_memory = disk[f"{name}_fp16"], memory[f"{name}_fp16"]
        assert is_lazy(on_disk) and not is_lazy(in_memory)
        np.testing.assert_array_equal(tensor_values(on_disk), numpy_helper.to_array(in_memory))
