"""Ranking nodes by damage reads a bounded amount of input data, whatever the probe holds."""

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from optc.passes.fallback import RANKING_INPUT_BYTES, rank_by_damage
from tests.conftest import make_model


def relu_over(width: int):
    return make_model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
    )


def counted_feeds(width: int, count: int, pulled: list[int]):
    for i in range(count):
        pulled.append(i)
        yield {"x": np.full((1, width), i - 2, dtype=np.float32)}


def test_ranking_stops_reading_large_samples_at_its_byte_budget(tmp_path: Path):
    width = RANKING_INPUT_BYTES // 2 // 4  # two samples fill the budget
    pulled: list[int] = []
    ranking = rank_by_damage(relu_over(width), relu_over(width), counted_feeds(width, 64, pulled), tmp_path)
    assert [d.node for d in ranking] == ["relu"]
    assert len(pulled) == 3  # two used, the third seen to stop


def test_ranking_reads_every_small_sample(tmp_path: Path):
    pulled: list[int] = []
    rank_by_damage(relu_over(16), relu_over(16), counted_feeds(16, 64, pulled), tmp_path)
    assert len(pulled) == 64
