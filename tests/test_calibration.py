"""Calibration: each method's range on a known distribution, and streaming reads that never load the whole file."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optc.data import input_specs, stream_batches
from optc.passes.calibration import CalibrationConfig, calibrate, collector_for, tensors_to_calibrate
from tests.conftest import make_model

# 10,000 values in [-1, 1] plus one outlier at 50: minmax must reach it, percentile and entropy must clip it.
VALUES = np.concatenate([np.random.default_rng(0).uniform(-1, 1, 9_999), [50.0]]).astype(np.float32).reshape(-1, 10)


def identity_mul() -> onnx.ModelProto:
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    return make_model(
        [helper.make_node("Mul", ["x", "one"], ["y"], name="mul")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [one],
    )


def ranges(tmp_path: Path, **settings) -> tuple[float, float]:
    model = identity_mul()
    tensors = tensors_to_calibrate(model, {"Mul"})
    assert tensors == ["x", "y"]  # the weight "one" is not an activation
    batches = (VALUES[i : i + 100] for i in range(0, len(VALUES), 100))
    result = calibrate(
        model, tensors, ({"x": b} for b in batches), collector_for(CalibrationConfig(**settings), False), tmp_path
    )
    assert result.samples == len(VALUES) and result.batches == 10
    return result.ranges["y"]


def test_minmax_covers_the_outlier(tmp_path: Path):
    low, high = ranges(tmp_path)
    assert low == pytest.approx(VALUES.min()) and high == 50.0


def test_percentile_clips_the_outlier(tmp_path: Path):
    low, high = ranges(tmp_path, method="percentile", percentile=99.9)
    assert -1.1 < low < -0.9 and 0.9 < high < 1.5


def test_entropy_clips_the_outlier(tmp_path: Path):
    low, high = ranges(tmp_path, method="entropy")
    assert high < 25 and low > -25


def test_moving_average_stays_inside_the_extremes(tmp_path: Path):
    low, high = ranges(tmp_path, moving_average=True, averaging_constant=0.5)
    assert -1.0 <= low < 0 and 0.9 < high < 50.0  # the outlier's batch is averaged, not taken as the maximum


def test_method_specific_fields_are_refused_elsewhere():
    with pytest.raises(ValueError, match="percentile applies only"):
        CalibrationConfig(method="minmax", percentile=99.0)
    with pytest.raises(ValueError, match="moving_average applies only"):
        CalibrationConfig(method="entropy", moving_average=True)


def test_npz_is_streamed_in_batches_with_a_sample_cap(tmp_path: Path):
    path = tmp_path / "calib.npz"
    np.savez_compressed(path, x=VALUES, labels=np.zeros(len(VALUES), np.int64))
    batches = list(stream_batches(path, input_specs(identity_mul()), batch_size=64, samples=200))
    assert [len(b["x"]) for b in batches] == [64, 64, 64, 8]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), VALUES[:200])


def test_folder_of_npy_and_npz_files_is_streamed(tmp_path: Path):
    folder = tmp_path / "calib"
    folder.mkdir()
    np.savez(folder / "a.npz", x=VALUES[:30])
    np.savez(folder / "b.npz", x=VALUES[30:50])
    batches = list(stream_batches(folder, input_specs(identity_mul()), batch_size=25))
    assert [len(b["x"]) for b in batches] == [25, 5, 20]
    other = tmp_path / "npy"
    other.mkdir()
    np.save(other / "x.npy", VALUES[:10])
    assert [len(b["x"]) for b in stream_batches(other, input_specs(identity_mul()), batch_size=4)] == [4, 4, 2]


def test_npy_rows_are_read_exactly_in_either_memory_order(tmp_path: Path):
    for name, values in (("c", VALUES[:10]), ("fortran", np.asfortranarray(VALUES[:10]))):
        folder = tmp_path / name
        folder.mkdir()
        np.save(folder / "x.npy", values)
        batches = list(stream_batches(folder, input_specs(identity_mul()), batch_size=3))
        np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), VALUES[:10])
