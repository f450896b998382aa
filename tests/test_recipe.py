from pathlib import Path

import pytest

from optc.errors import OptcError
from optc.recipe import builtin_recipe_names, load_recipe, parse_recipe, recipe_json_schema


def parse(text: str):
    return parse_recipe(text, source="r.yaml", base_dir=None)


def error_of(text: str) -> str:
    with pytest.raises(OptcError) as info:
        parse(text)
    return info.value.message


def test_every_builtin_recipe_is_valid():
    assert "int8-dynamic" in builtin_recipe_names()
    for name in builtin_recipe_names():
        loaded = load_recipe(name)
        assert loaded.source == f"built-in:{name}"
        assert loaded.recipe.passes


def test_unknown_field_names_the_path_and_the_known_fields():
    message = error_of("version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n    per_chanel: true\n")
    assert "r.yaml" in message
    assert "passes[0].per_chanel: unknown field" in message
    assert "per_channel" in message  # what was expected


def test_wrong_type_names_the_field_and_the_value():
    message = error_of(
        "version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n  - type: quantize\n"
        "    mode: dynamic\n    per_channel: maybe\n"
    )
    assert "passes[1].per_channel" in message
    assert "boolean" in message and "'maybe'" in message


def test_unknown_pass_type_is_refused():
    message = error_of("version: 1\npasses:\n  - type: sharpen\n")
    assert "passes[0]" in message
    assert "sharpen" in message


def test_nested_unknown_field_in_exclude():
    message = error_of("version: 1\npasses:\n  - type: quantize\n    mode: dynamic\n    exclude: {node: [a]}\n")
    assert "passes[0].exclude.node: unknown field (expected one of: nodes, patterns, op_types)" in message


def test_out_of_range_value():
    message = error_of("version: 1\npasses:\n  - {type: quantize, mode: dynamic}\nevaluate: {latency: {runs: 0}}\n")
    assert "evaluate.latency.runs" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\npasses: [\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("", "empty"),
        ("!!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
        ("version: 2\npasses:\n  - {type: quantize, mode: dynamic}\n", "version"),
        ("version: 1\npasses: []\n", "passes"),
    ],
)
def test_bad_recipes_give_one_clear_message(text, expected):
    assert expected in error_of(text)


def test_yaml_tags_never_construct_objects(tmp_path: Path):
    marker = tmp_path / "pwned"
    with pytest.raises(OptcError):
        parse(f"!!python/object/apply:os.system ['touch {marker}']\n")
    assert not marker.exists()


def test_bare_name_and_path_both_load(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("version: 1\npasses:\n  - {type: quantize, mode: dynamic}\nevaluate: {data: eval.npz}\n")
    loaded = load_recipe(path)
    assert loaded.base_dir == tmp_path
    assert loaded.recipe.evaluate.data == Path("eval.npz")
    assert load_recipe("int8-dynamic").base_dir is None


def test_unknown_recipe_lists_builtins():
    with pytest.raises(OptcError) as info:
        load_recipe("int9")
    assert "int8-dynamic" in (info.value.hint or "")


def test_schema_covers_every_pass_type():
    schema = recipe_json_schema()
    assert schema["additionalProperties"] is False
    text = str(schema)
    assert "quantize" in text and "passes" in schema["properties"]
