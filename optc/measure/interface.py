"""Models measured against each other must be fed the same inputs (outputs are matched by name where compared)."""

from __future__ import annotations

from optc.data import input_specs
from optc.errors import OptcError
from optc.modelio import LoadedModel


def check_same_inputs(loaded: list[LoadedModel]) -> None:
    """Raise naming the first model whose input names or dtypes differ from ``loaded[0]``'s."""
    first = _inputs(loaded[0])
    for other in loaded[1:]:
        found = _inputs(other)
        if found != first:
            raise OptcError(
                f"{other.path}: inputs {found} differ from {loaded[0].path}'s {first}",
                hint="measure versions of the same model: they are fed the same inputs",
            )


def _inputs(loaded: LoadedModel) -> dict[str, str]:
    return {s.name: str(s.dtype) for s in input_specs(loaded.model)}
