"""The prune recipe block: method-specific fields and ranges are checked, and the message names the field."""

from __future__ import annotations

import pytest

from optc.errors import OptcError
from optc.recipe import load_recipe, parse_recipe


def recipe_with(block: str) -> str:
    return f"version: 1\npasses:\n  - type: prune\n{block}"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("    method: magnitude\n    sparsity: 1.0\n", "sparsity must be in [0, 1)"),
        ("    method: magnitude\n", "method magnitude needs `sparsity`"),
        ("    method: channel\n    sparsity: 0.5\n    accuracy_budget: 1\n", "only apply with sparsity: auto"),
        ("    method: channel\n    sparsity: auto\n", "sparsity: auto needs `accuracy_budget`"),
        ("    method: channel\n    sparsity: 0.5\n    scope: global\n", "`scope` does not apply to method channel"),
        ("    method: outputs\n", "method outputs needs `keep`"),
        ("    method: outputs\n    keep: [y]\n    sparsity: 0.5\n", "`sparsity` does not apply to method outputs"),
        (
            "    method: outputs\n    keep: [y]\n    reconstruct: true\n",
            "`reconstruct` does not apply to method outputs",
        ),
        ("    method: magnitude\n    sparsity: 0.5\n    sparse: 1\n", "passes[0].sparse: unknown field"),
        (
            "    method: channel\n    sparsity: auto\n    accuracy_budget: 1\n    search_range: [0.5, 0.2]\n",
            "search_range must satisfy",
        ),
    ],
)
def test_bad_prune_block_is_refused_with_the_reason(block, message):
    with pytest.raises(OptcError) as error:
        parse_recipe(recipe_with(block), source="r.yaml", base_dir=None)
    assert message in error.value.message


def test_built_in_prune_recipes_load():
    for name in ("prune-magnitude-50", "prune-channels-25", "prune-auto"):
        recipe = load_recipe(name).recipe
        assert recipe.passes[0].type == "prune"
        assert recipe.passes[0].reconstruct  # fitted to --calibration-data when it is given
