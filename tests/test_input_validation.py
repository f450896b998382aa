"""Bad input is refused at the edge, with exit 2 and one message naming the file, field or array — never a hang,
a crash, or a model quietly built on garbage."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optc.compress
from optc.cli.app import app
from optc.gates import effective_gates
from optc.recipe import load_recipe, parse_recipe
from tests.conftest import CNN, CNN_TEST, DYNAMIC_PASS, SAMPLES, make_model, mlp_model

STATIC_PASS = "  - type: quantize\n    mode: static\n"
CALIB = SAMPLES / "digits_calib.npz"


@pytest.fixture
def no_work(monkeypatch):
    """Runs refused at the edge must not reach the passes."""

    def refuse(*args, **kwargs):
        raise AssertionError("a pass started although the input should have been refused")

    monkeypatch.setattr(optc.compress, "run_passes", refuse)


def compress(runner, tmp_path: Path, recipe: Path, *extra: str, model: Path = CNN):
    return runner.invoke(app, ["compress", str(model), "-r", str(recipe), "-o", str(tmp_path / "out.onnx"), *extra])


def digits(**overrides) -> dict[str, np.ndarray]:
    data = dict(np.load(CNN_TEST))
    data.update(overrides)
    return data


def test_a_non_finite_calibration_value_is_refused_naming_file_array_and_index(runner, tmp_path, fast_recipe):
    images = np.array(np.load(CALIB)["input"])
    images[37, 0, 2, 5] = np.inf
    np.savez(tmp_path / "calib.npz", input=images)
    result = compress(runner, tmp_path, fast_recipe(STATIC_PASS), "--calibration-data", str(tmp_path / "calib.npz"))
    assert result.exit_code == 2, result.output
    assert "calib.npz" in result.stderr and "'input'" in result.stderr and "inf at index [37, 0, 2, 5]" in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_nan_in_evaluation_data_is_refused_before_any_work(runner, tmp_path, fast_recipe, no_work):
    data = digits()
    data["input"] = data["input"].copy()
    data["input"][3, 0, 0, 0] = np.nan
    np.savez(tmp_path / "eval.npz", **data)
    result = compress(runner, tmp_path, fast_recipe(DYNAMIC_PASS), "--data", str(tmp_path / "eval.npz"))
    assert result.exit_code == 2 and "nan at index [3, 0, 0, 0]" in result.stderr


@pytest.mark.parametrize(("label", "message"), [(10, "holds 10 at index 5"), (-1, "holds -1 at index 5")])
def test_labels_outside_the_classes_are_refused_before_any_work(runner, tmp_path, fast_recipe, no_work, label, message):
    labels = digits()["labels"].copy()
    labels[5] = label
    np.savez(tmp_path / "eval.npz", **digits(labels=labels))
    result = compress(runner, tmp_path, fast_recipe(DYNAMIC_PASS), "--data", str(tmp_path / "eval.npz"))
    assert result.exit_code == 2 and message in result.stderr


def npz_with_member(path: Path, name: str, payload: bytes, compress: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr(f"{name}.npy", payload)
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_an_npz_whose_header_claims_512_gib_is_refused_without_reading_it(runner, tmp_path, fast_recipe, no_work):
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "<f4", "fortran_order": False, "shape": (2**37, 1, 8, 8)})
    forged = npz_with_member(tmp_path / "forged.npz", "input", header.getvalue() + b"\0" * 4096)
    for option in ("--data", "--calibration-data"):
        result = compress(runner, tmp_path, fast_recipe(STATIC_PASS), option, str(forged))
        assert result.exit_code == 2, result.output
        assert "declares shape [137438953472, 1, 8, 8]" in result.stderr and "forged" in result.stderr


def test_a_zip_bomb_is_refused(runner, tmp_path, fast_recipe, no_work):
    zeros = npy_bytes(np.zeros((70 << 20) // 4, np.float32))  # 70 MB of zeros deflate to ~70 kB
    bomb = npz_with_member(tmp_path / "bomb.npz", "input", zeros, compress=True)
    result = compress(runner, tmp_path, fast_recipe(STATIC_PASS), "--calibration-data", str(bomb))
    assert result.exit_code == 2 and "zip bomb" in result.stderr


def test_a_device_as_calibration_data_is_refused(runner, tmp_path, fast_recipe, no_work):
    result = compress(runner, tmp_path, fast_recipe(STATIC_PASS), "--calibration-data", "/dev/zero")
    assert result.exit_code == 2 and "not a regular file" in result.stderr


def test_missing_calibration_data_is_named_by_its_option_before_any_work(runner, tmp_path, fast_recipe, no_work):
    result = compress(runner, tmp_path, fast_recipe(STATIC_PASS), "--calibration-data", str(tmp_path / "nope.npz"))
    assert result.exit_code == 2 and "--calibration-data" in result.stderr and "no such file" in result.stderr
    recipe = fast_recipe("  - type: fuse\n" + STATIC_PASS + "    calibration: {data: missing.npz}\n")
    result = compress(runner, tmp_path, recipe)
    assert result.exit_code == 2 and "passes[1].calibration.data" in result.stderr


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("min_time_s: .inf", "min_time_s"),
        ("runs: 100000000000000000000000000", "runs"),
        ("warmup: 1000000000000", "warmup"),
        ("threads: 100000", "threads"),
        ("batch_size: 1000000000", "batch_size"),
        ("runs: true", "runs"),
    ],
)
def test_measurement_settings_out_of_bounds_are_refused_naming_the_field(runner, tmp_path, setting, field):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\npasses:\n{DYNAMIC_PASS}evaluate:\n  latency: {{{setting}}}\n")
    result = compress(runner, tmp_path, recipe)
    assert result.exit_code == 2 and f"evaluate.latency.{field}" in result.stderr


def test_version_true_is_not_version_1(runner, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: true\npasses:\n{DYNAMIC_PASS}")
    result = runner.invoke(app, ["recipes", "validate", str(recipe)])
    assert result.exit_code == 2 and "version" in result.stderr


def test_deeply_nested_yaml_and_json_are_refused(runner, tmp_path):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text("version: 1\npasses: " + "[" * 5000 + "]" * 5000 + "\n")
    result = runner.invoke(app, ["recipes", "validate", str(recipe)])
    assert result.exit_code == 2 and "nested more than" in result.stderr
    report = tmp_path / "deep.json"
    report.write_text('{"schema_version": 1, "x": ' + "[" * 100000 + "]" * 100000 + "}")
    result = runner.invoke(app, ["report", "show", str(report)])
    assert result.exit_code == 2 and "nested too deeply" in result.stderr


def test_alias_bombs_in_recipes_are_refused():
    bomb = "version: 1\na: &a [x, x]\n" + "".join(f"b{i}: &b{i} [*a, *a]\n" for i in range(70))
    with pytest.raises(optc.errors.OptcError, match="aliases"):
        parse_recipe(bomb, "bomb.yaml", None)


def test_zero_sized_input_shapes_are_refused(runner, tmp_path, fast_recipe, no_work):
    result = compress(runner, tmp_path, fast_recipe(DYNAMIC_PASS), "--input-shape", "input=0x1x8x8")
    assert result.exit_code == 2 and "at least 1" in result.stderr


def test_a_provider_this_build_lacks_is_refused_before_any_work(runner, tmp_path, fast_recipe, monkeypatch):
    from optc.measure import providers

    monkeypatch.setattr(providers.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    refused = compress(runner, tmp_path, fast_recipe(DYNAMIC_PASS), "--providers", "cuda")
    assert refused.exit_code == 2 and "CUDAExecutionProvider" in refused.stderr
    assert not (tmp_path / "out.onnx").exists()
    allowed = compress(runner, tmp_path, fast_recipe(DYNAMIC_PASS), "--providers", "cuda", "--allow-unmeasured")
    assert allowed.exit_code == 0, allowed.output
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["measurements"][0]["measured"] is False


def test_an_accuracy_budget_is_a_gate_on_the_finished_model():
    recipe = parse_recipe(
        "version: 1\npasses:\n  - type: prune\n    method: channel\n    sparsity: auto\n    accuracy_budget: 1.0\n"
        "  - type: quantize\n    mode: static\n",
        "r.yaml",
        None,
    ).recipe
    gates, sources = effective_gates(recipe, {})
    assert gates.max_accuracy_drop == 1.0 and sources["max_accuracy_drop"] == "passes[0].accuracy_budget"
    # Budgets are drops against the recipe's input: the last one bounds the finished model, as in prune-auto.
    shared, sources = effective_gates(load_recipe("prune-auto").recipe, {})
    assert shared.max_accuracy_drop == 1.0 and sources["max_accuracy_drop"] == "passes[2].accuracy_budget"
    tighter, sources = effective_gates(recipe, {"max_accuracy_drop": 0.5})
    assert tighter.max_accuracy_drop == 0.5 and sources["max_accuracy_drop"] == "--max-accuracy-drop"


# ----------------------------------------------------------------------------------------------------- models


def save(model: onnx.ModelProto, folder: Path, name: str = "m.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def zipmap_classifier() -> onnx.ModelProto:
    """MatMul → LinearClassifier → ZipMap: a sequence-of-maps output, as skl2onnx writes classifiers."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node(
            "LinearClassifier",
            ["h"],
            ["label", "probabilities"],
            domain="ai.onnx.ml",
            name="classifier",
            coefficients=rng.standard_normal(12).tolist(),
            intercepts=[50.0, 0.0, 0.0],  # one class wins every sample: int8 cannot flip the label output
            classlabels_ints=[0, 1, 2],
            post_transform="SOFTMAX",
        ),
        helper.make_node("ZipMap", ["probabilities"], ["by_class"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]),
    ]
    by_class = helper.make_value_info(
        "by_class",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
        ),
    )
    graph = helper.make_graph(
        nodes,
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]), by_class],
        # weights enough for fp16 to save more than its Casts cost
        [numpy_helper.from_array(rng.standard_normal((256, 4)).astype(np.float32) / 16, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("recipe", ["int8-dynamic", "fuse", "fp16"])
def test_sequence_of_map_outputs_pass_through(runner, tmp_path, recipe):
    model = save(zipmap_classifier(), tmp_path)
    result = compress(runner, tmp_path, recipe, "--min-cosine", "-1", model=model)  # random weights: pass-through only
    assert result.exit_code == 0, result.output
    outputs = [o.name for o in onnx.load_model(str(tmp_path / "out.onnx")).graph.output]
    assert outputs == ["label", "by_class"]


def test_a_sequence_input_is_refused_with_a_clear_message(runner, tmp_path, fast_recipe, no_work):
    sequence_in = helper.make_value_info("xs", helper.make_sequence_type_proto(helper.make_tensor_type_proto(1, [4])))
    graph = helper.make_graph(
        [helper.make_node("SequenceAt", ["xs", "zero"], ["y"])],
        "seq",
        [sequence_in],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.array(0, np.int64), "zero")],
    )
    model = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path)
    result = compress(runner, tmp_path, fast_recipe(DYNAMIC_PASS), model=model)
    assert result.exit_code == 2 and "'xs' is a sequence, not a tensor" in result.stderr


def with_external(model: onnx.ModelProto, tensor: onnx.TensorProto, location: str, folder: Path) -> None:
    values = numpy_helper.to_array(tensor)
    (folder / location).write_bytes(values.tobytes())
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)


def sparse_model(folder: Path, location: str) -> Path:
    """The MLP plus ``x + sparse``, the sparse tensor's values stored in external data at ``location``."""
    model = mlp_model()
    values = numpy_helper.from_array(np.array([1.0, -2.0, 3.0], np.float32), "sparse_bias")
    indices = numpy_helper.from_array(np.array([0, 5, 9], np.int64), "sparse_bias_indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [16]))
    model.graph.node.insert(0, helper.make_node("Add", ["x_in", "sparse_bias"], ["x"], name="add_sparse"))
    model.graph.input[0].name = "x_in"
    folder.mkdir(parents=True, exist_ok=True)
    with_external(model, model.graph.sparse_initializer[0].values, location, folder)
    return save(model, folder)


def test_sparse_initializers_are_confined_and_carried_like_dense_ones(runner, tmp_path):
    inside = sparse_model(tmp_path / "ok", "sparse.bin")
    result = compress(runner, tmp_path, "int8-dynamic", model=inside)
    assert result.exit_code == 0, result.output
    written = onnx.load_model(str(tmp_path / "out.onnx"))  # self-contained: no reference to sparse.bin remains
    assert not any(e.key == "location" for s in written.graph.sparse_initializer for e in s.values.external_data)
    (tmp_path / "secret.bin").write_bytes(np.ones(3, np.float32).tobytes())
    escaping = sparse_model(tmp_path / "bad", "../secret.bin")
    result = compress(runner, tmp_path, "int8-dynamic", model=escaping)
    assert result.exit_code == 2 and "escapes the model's folder" in result.stderr


def test_hard_linked_or_doubly_located_external_data_is_refused(runner, tmp_path):
    model = mlp_model()
    folder = tmp_path / "m"
    folder.mkdir()
    with_external(model, model.graph.initializer[0], "w.bin", folder)
    path = save(model, folder)
    (tmp_path / "elsewhere.bin").hardlink_to(folder / "w.bin")
    result = compress(runner, tmp_path, "int8-dynamic", model=path)
    assert result.exit_code == 2 and "hard links" in result.stderr
    (tmp_path / "elsewhere.bin").unlink()
    model.graph.initializer[0].external_data.add(key="location", value="other.bin")
    result = compress(runner, tmp_path, "int8-dynamic", model=save(model, folder))
    assert result.exit_code == 2 and "names 2 external data locations" in result.stderr


def test_the_structural_check_takes_a_long_chain_in_linear_time(tmp_path):
    from optc.modelio import load_model

    n = 50_000
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu{i}") for i in range(n)]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, [1])],
    )
    loaded = load_model(save(model, tmp_path))  # quadratic, this took minutes; linear, a second or two
    assert len(loaded.model.graph.node) == n


def test_if_branches_with_nested_subgraphs_are_not_cycles(tmp_path):
    """A tensor made inside an inner If branch and read there is no read from the outer graph."""
    from optc.modelio import load_model

    inner_then = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["inner_made"]), helper.make_node("Abs", ["inner_made"], ["inner_out"])],
        "inner_then",
        [],
        [helper.make_tensor_value_info("inner_out", TensorProto.FLOAT, [2])],
    )
    inner_else = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["inner_out2"])],
        "inner_else",
        [],
        [helper.make_tensor_value_info("inner_out2", TensorProto.FLOAT, [2])],
    )
    outer_then = helper.make_graph(
        [helper.make_node("If", ["cond"], ["branch_out"], then_branch=inner_then, else_branch=inner_else)],
        "outer_then",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [2])],
    )
    outer_else = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["else_out"])],
        "outer_else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2])],
    )
    model = make_model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=outer_then, else_branch=outer_else)],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    assert load_model(save(model, tmp_path)).model.graph.node[0].op_type == "If"
