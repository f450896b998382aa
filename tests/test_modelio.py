import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optc import modelio, outputs
from optc.errors import OptcError
from optc.modelio import load_model, write_model
from optc.outputs import TEMP_PREFIX, staged_outputs
from tests.conftest import mlp_model


def save_model(model: onnx.ModelProto, dest: Path) -> int:
    """Write ``model`` the way compress does (staged, renamed into place); returns the bytes written."""
    with staged_outputs() as staging:
        staging.path_for(dest.with_name(dest.name + ".data"))
        written = write_model(model, staging.path_for(dest))
        size = sum(p.stat().st_size for p in written)
    return size


def load_error(path: Path) -> str:
    with pytest.raises(OptcError) as info:
        load_model(path)
    return info.value.message


def test_load_reports_size_and_hash(mlp_path: Path):
    loaded = load_model(mlp_path)
    assert loaded.size_bytes == mlp_path.stat().st_size
    assert len(loaded.sha256) == 64
    assert len(loaded.model.graph.node) == 4


def test_missing_empty_truncated_and_random_files_are_refused(tmp_path: Path, mlp_path: Path):
    assert "no such file" in load_error(tmp_path / "nope.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert "empty" in load_error(empty)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mlp_path.read_bytes()[:-40])
    assert str(truncated) in load_error(truncated)
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    assert str(noise) in load_error(noise)


def test_protobuf_that_is_not_a_model_is_refused(tmp_path: Path):
    path = tmp_path / "tensor.onnx"
    path.write_bytes(numpy_helper.from_array(np.zeros(3, np.float32), "t").SerializeToString())
    assert "not" in load_error(path)


def test_model_without_outputs_is_refused(tmp_path: Path):
    model = mlp_model()
    del model.graph.output[:]
    path = tmp_path / "no_outputs.onnx"
    onnx.save_model(model, str(path))
    assert "no outputs" in load_error(path)


def _with_external_location(tmp_path: Path, location: str) -> Path:
    model = mlp_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "sub/../../secret.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path, location: str):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    message = load_error(_with_external_location(tmp_path, location))
    assert "W1" in message and ("absolute" in message or "escapes" in message)


def test_external_data_symlink_out_of_the_folder_is_refused(tmp_path: Path):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    path = _with_external_location(tmp_path, "weights.bin")
    (path.parent / "weights.bin").symlink_to(tmp_path / "secret.bin")
    assert "symlink" in load_error(path)


def test_missing_external_data_file_is_refused(tmp_path: Path):
    assert "does not exist" in load_error(_with_external_location(tmp_path, "weights.bin"))


def test_save_is_complete_and_leaves_no_temporary_files(tmp_path: Path):
    dest = tmp_path / "out" / "m.onnx"
    written = save_model(mlp_model(), dest)
    assert written == dest.stat().st_size
    assert onnx.load_model(str(dest)).graph.node[0].name == "mm1"
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_interrupted_save_keeps_the_previous_file_and_cleans_up(tmp_path: Path, monkeypatch):
    dest = tmp_path / "m.onnx"
    dest.write_bytes(b"previous complete file")

    def interrupted(path, payload):
        Path(path).write_bytes(payload[: len(payload) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(modelio, "write_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_model(mlp_model(), dest)
    assert dest.read_bytes() == b"previous complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_failed_save_of_a_new_file_leaves_nothing(tmp_path: Path, monkeypatch):
    def failing(path, payload):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "write_file", failing)
    with pytest.raises(OptcError, match="nothing was written"):
        outputs.write_text(tmp_path / "report.json", "{}", [])
    assert list(tmp_path.iterdir()) == []


def test_large_models_are_written_with_external_data(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(modelio, "EXTERNAL_DATA_THRESHOLD", 1024)
    dest = tmp_path / "big.onnx"
    written = save_model(mlp_model(), dest)
    data = tmp_path / "big.onnx.data"
    assert data.exists()
    assert written == dest.stat().st_size + data.stat().st_size
    reloaded = load_model(dest)
    assert reloaded.size_bytes == written
    np.testing.assert_array_equal(
        numpy_helper.to_array(reloaded.model.graph.initializer[0]),
        numpy_helper.to_array(mlp_model().graph.initializer[0]),
    )
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
