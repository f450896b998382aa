from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc.data import (
    DEFAULT_SYMBOLIC_DIM,
    InputSpec,
    input_specs,
    load_dataset,
    open_image_sizes,
    parse_input_shapes,
    symbolic_sizes,
    synthetic_dataset,
)
from optc.errors import OptcError
from tests.conftest import SAMPLES, make_model, mlp_model


def token_model():
    table = numpy_helper.from_array(np.zeros((50, 4), np.float32), "table")
    return make_model(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
            helper.make_node("ReduceSum", ["e"], ["y"], name="sum", keepdims=0),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [table],
    )


def test_sample_data_loads_with_labels():
    specs = input_specs(mlp_model())
    assert specs[0].name == "x" and specs[0].batch_is_symbolic
    from optc.modelio import load_model

    cnn = load_model(SAMPLES / "digits_cnn.onnx").model
    data = load_dataset(SAMPLES / "digits_test.npz", input_specs(cnn), samples=100)
    assert len(data) == 100 and data.labels.shape == (100,)
    assert [b["input"].shape[0] for b in data.batches(32)] == [32, 32, 32, 4]


def save(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"input": np.zeros((4, 16), np.float32)}, "no array for model input(s) 'x'"),
        ({"x": np.zeros((4, 16), np.float32), "z": np.zeros(4)}, "'z' match no model input"),
        ({"x": np.zeros((4, 15), np.float32)}, "does not fit the model input shape"),
        ({"x": np.zeros((4, 16), np.int64)}, "dtype int64"),
        ({"x": np.zeros(4, np.float32)}, "rank"),
        ({"x": np.zeros((4, 16), np.float32), "labels": np.zeros(3, np.int64)}, "disagree"),
        ({"x": np.zeros((4, 16), np.float32), "labels": np.zeros(4, np.float32)}, "integer class indices"),
    ],
)
def test_mismatched_data_names_the_file_and_the_problem(tmp_path: Path, arrays, expected):
    path = save(tmp_path, **arrays)
    with pytest.raises(OptcError) as info:
        load_dataset(path, input_specs(mlp_model()))
    assert expected in info.value.message + (info.value.hint or "")
    assert str(path) in info.value.message


def test_float64_data_is_cast_to_the_model_dtype(tmp_path: Path):
    data = load_dataset(save(tmp_path, x=np.ones((3, 16))), input_specs(mlp_model()))
    assert data.inputs["x"].dtype == np.float32


def test_folder_of_npz_files_is_concatenated(tmp_path: Path):
    for i in range(3):
        np.savez(tmp_path / f"part{i}.npz", x=np.full((2, 16), i, np.float32))
    data = load_dataset(tmp_path, input_specs(mlp_model()))
    assert len(data) == 6 and data.inputs["x"][-1, 0] == 2


def test_synthetic_inputs_are_seeded_and_token_ids_stay_in_the_table():
    model = token_model()
    specs = input_specs(model)
    defaulted = synthetic_dataset(model, specs, seed=0)
    assert defaulted.assumed == {"seq": DEFAULT_SYMBOLIC_DIM}  # said out loud by compress
    assert defaulted.inputs["ids"].shape[1] == defaulted.inputs["attention_mask"].shape[1] == DEFAULT_SYMBOLIC_DIM
    shapes = parse_input_shapes(["ids=1x8", "attention_mask=1x8"])
    a = synthetic_dataset(model, specs, seed=3, input_shapes=shapes)
    b = synthetic_dataset(model, specs, seed=3, input_shapes=shapes)
    np.testing.assert_array_equal(a.inputs["ids"], b.inputs["ids"])
    assert a.inputs["ids"].shape == (32, 8)
    assert a.inputs["ids"].max() < 50 and a.inputs["ids"].max() > 10
    assert a.synthetic


def test_synthetic_token_sequences_are_padded_like_a_tokenized_batch():
    """An all-ones mask never exercised padded positions, whose hidden states are outputs too: a real sentence
    encoder passed the synthetic probe at cosine 0.99 and fell to 0.33 there on real, padded text."""
    model = token_model()
    data = synthetic_dataset(model, input_specs(model), seed=0, input_shapes=parse_input_shapes(["ids=1x16"]))
    mask, ids = data.inputs["attention_mask"], data.inputs["ids"]
    lengths = mask.sum(axis=1)
    assert (mask == (np.arange(16) < lengths[:, None])).all()  # ones, then zeros
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] > 0).mean() > 0.9
    assert lengths.min() >= 4 and (lengths < 16).mean() > 0.5  # most samples padded, none empty


@pytest.mark.parametrize("bad", ["ids", "ids=", "ids=1xa", "=1x2"])
def test_bad_input_shape_flag(bad):
    with pytest.raises(OptcError, match="NAME=DIM"):
        parse_input_shapes([bad])


def decoder_specs() -> list[InputSpec]:
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    return [
        InputSpec("input_ids", i64, ("batch", "sequence_length")),
        InputSpec("attention_mask", i64, ("batch", "total_sequence_length")),
        InputSpec("position_ids", i64, ("batch", "sequence_length")),
        InputSpec("past_key_values.0.key", f32, ("batch", 2, "past_sequence_length", 8)),
    ]


def test_decoder_dims_stay_consistent_given_or_assumed():
    sizes, assumed = symbolic_sizes(decoder_specs(), {})
    assert sizes["past_sequence_length"] == 0  # an empty cache: evaluation runs are prefills
    assert sizes["total_sequence_length"] == sizes["past_sequence_length"] + sizes["sequence_length"]
    assert set(assumed) == {"sequence_length", "past_sequence_length", "total_sequence_length"}
    sizes, assumed = symbolic_sizes(decoder_specs(), {"input_ids": (1, 1), "past_key_values.0.key": (1, 2, 128, 8)})
    assert (sizes["sequence_length"], sizes["past_sequence_length"], sizes["total_sequence_length"]) == (1, 128, 129)
    assert set(assumed) == {"total_sequence_length"}


def test_scalar_inputs_get_one_value_per_sample():
    model = make_model(
        [helper.make_node("Mul", ["x", "rate"], ["y"])],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("rate", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    data = synthetic_dataset(model, input_specs(model), seed=0)
    feed = next(data.batches(1))
    assert feed["rate"].shape == () and feed["x"].shape == (1, 4)


def spec(name: str, *shape) -> InputSpec:
    return InputSpec(name=name, dtype=np.dtype(np.float32), shape=shape)


def test_open_image_sizes_are_those_of_image_batches_alone():
    nchw, nhwc = spec("x", "n", 3, "?", "w"), spec("photo", "n", "h", "w", 3)
    cache = spec("past_key", "batch", 1, "past_sequence_length", 64)  # a decoder's cache: not an image
    features = spec("feats", "n", 8, "t", 16)  # 8 channels: not an image either
    assert open_image_sizes([nchw, nhwc, cache, features], {}) == {"x": ["?", "w"], "photo": ["h", "w"]}
    # a size given for one input binds the dim names it shares with others
    assert open_image_sizes([nchw, nhwc], {"x": (1, 3, 48, 320)}) == {"photo": ["h"]}
