"""Fuzzing: mutated sample models and recipes must end in exit 0/1/2/3, never an uncaught exception (exit 4) or a
traceback, and a failed run must leave no output behind.

CI runs a short, seeded run; `make fuzz` runs a long one (OPTC_FUZZ_EXAMPLES=N sets the count).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import onnx
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optc.cli import app
from optc.passes import registered_passes
from tests.conftest import SAMPLES

EXAMPLES = int(os.environ.get("OPTC_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="OPTC_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CNN_BYTES = (SAMPLES / "digits_cnn.onnx").read_bytes()
FAST_EVALUATE = {"latency": {"warmup": 0, "runs": 1, "min_time_s": 0}}
OP_TYPES = ["Relu", "Conv", "Gemm", "MatMul", "Add", "Identity", "Softmax", "Reshape", "NotAnOp"]


def run_compress(runner, model: Path, recipe: Path, out: Path, *extra: str):
    result = runner.invoke(app, ["compress", str(model), "-r", str(recipe), "-o", str(out), "--quiet", *extra])
    assert result.exit_code in (0, 1, 2, 3), f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    if result.exit_code in (2, 3):
        assert not out.exists(), "a failed run left its output behind"
        assert not list(out.parent.glob(".optc-tmp-*"))
    return result


def write_recipe(folder: Path, passes: list) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "passes": passes, "evaluate": FAST_EVALUATE}))
    return path


def mutate_structure(model: onnx.ModelProto, rng: random.Random) -> None:
    graph = model.graph
    tensors = [t for n in graph.node for t in [*n.input, *n.output]] + [i.name for i in graph.input]
    node = rng.choice(graph.node)
    action = rng.randrange(7)
    if action == 0 and len(graph.node) > 1:
        graph.node.remove(node)
    elif action == 1 and node.input:
        node.input[rng.randrange(len(node.input))] = rng.choice(tensors)
    elif action == 2:
        node.op_type = rng.choice(OP_TYPES)
    elif action == 3 and graph.initializer:
        tensor = rng.choice(graph.initializer)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice([0, 1, 3, 7, 64])
    elif action == 4 and node.attribute:
        attr = rng.choice(node.attribute)
        if attr.type == onnx.AttributeProto.INT:
            attr.i = rng.choice([-1, 0, 2, 1000])
        elif attr.type == onnx.AttributeProto.INTS and attr.ints:
            attr.ints[0] = rng.choice([-1, 0, 5])
    elif action == 5:
        model.opset_import[0].version = rng.choice([1, 7, 11, 13, 30])
    else:
        graph.input[0].type.tensor_type.elem_type = rng.choice(
            [onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16]
        )


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), mutations=st.integers(1, 3))
def test_structurally_mutated_models(runner, seed: int, mutations: int):
    rng = random.Random(seed)
    model = onnx.load_model_from_string(CNN_BYTES)
    for _ in range(mutations):
        mutate_structure(model, rng)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "mutant.onnx"
        path.write_bytes(model.SerializeToString())
        run_compress(
            runner, path, write_recipe(folder, [{"type": "quantize", "mode": "dynamic"}]), folder / "out" / "m.onnx"
        )


@FUZZ
@given(data=st.binary(min_size=1, max_size=64), position=st.floats(0, 1), truncate=st.booleans())
def test_byte_mutated_models(runner, data: bytes, position: float, truncate: bool):
    cut = int(position * len(CNN_BYTES))
    mutant = CNN_BYTES[:cut] + (b"" if truncate else data + CNN_BYTES[cut + len(data) :])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "mutant.onnx"
        path.write_bytes(mutant)
        run_compress(
            runner, path, write_recipe(folder, [{"type": "quantize", "mode": "dynamic"}]), folder / "out" / "m.onnx"
        )


values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(-2, 200, allow_nan=False),
    st.sampled_from(["", "auto", "minmax", "static", "dynamic", "MatMul", "Conv", "int8", "x"]),
    st.lists(st.sampled_from(["MatMul", "Gemm", "Conv", "fc1", "conv1", "nope"]), max_size=3),
)


def pass_blocks():
    def block(pass_type: str):
        fields = list(registered_passes()[pass_type].config_cls.model_fields)
        extra = st.dictionaries(st.sampled_from([*fields, "bogus"]), values, max_size=4)
        return extra.map(lambda d: {**{k: v for k, v in d.items() if k != "type"}, "type": pass_type})

    return st.sampled_from(sorted(registered_passes())).flatmap(block)


@FUZZ
@given(passes=st.lists(pass_blocks(), min_size=1, max_size=2))
def test_fuzzed_recipes(runner, passes: list):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recipe = write_recipe(folder, passes)
        run_compress(
            runner,
            SAMPLES / "digits_cnn.onnx",
            recipe,
            folder / "out" / "m.onnx",
            "--data",
            str(SAMPLES / "digits_test.npz"),
        )
