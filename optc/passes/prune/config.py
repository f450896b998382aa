"""The ``type: prune`` recipe block: one config for the three methods, with the method-specific rules in one hook."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from optc.passes.exclude import ExcludeSpec
from optc.passes.registry import PassConfig

PRUNABLE_OP_TYPES = ("Conv", "Gemm", "MatMul")
# Where ``sparsity: auto`` searches when no search_range is given: beyond these the models we know are broken anyway,
# and a full-width bisection would waste its first steps there.
DEFAULT_SEARCH_RANGE = {"magnitude": (0.0, 0.95), "channel": (0.0, 0.9)}

# Fields that only make sense for some methods; setting one for another method is a mistake worth stopping on.
METHOD_FIELDS = {
    "sparsity": ("magnitude", "channel"),
    "scope": ("magnitude",),
    "dense_first_last": ("magnitude",),
    "reconstruct": ("magnitude", "channel"),
    "norm": ("channel",),
    "op_types": ("magnitude", "channel"),
    "nodes": ("magnitude", "channel"),
    "exclude": ("magnitude", "channel"),
    "keep": ("outputs",),
    "accuracy_budget": ("magnitude", "channel"),
    "search_range": ("magnitude", "channel"),
    "search_steps": ("magnitude", "channel"),
}
AUTO_FIELDS = ("accuracy_budget", "search_range", "search_steps")


class PruneConfig(PassConfig):
    type: Literal["prune"]
    method: Literal["magnitude", "channel", "outputs"] = Field(
        description="magnitude: zero the smallest weights (smaller when compressed, same speed). channel: remove "
        "whole output channels and rewrite the graph (smaller and faster). outputs: keep only the named graph outputs."
    )
    sparsity: float | Literal["auto"] | None = Field(
        default=None,
        description="magnitude: fraction of weights set to zero; channel: fraction of each layer's output channels "
        "removed. In [0, 1), or `auto` to search for the largest value within accuracy_budget.",
    )
    accuracy_budget: float | None = Field(
        default=None, gt=0, description="With sparsity: auto, the largest allowed accuracy drop in points."
    )
    search_range: tuple[float, float] | None = Field(
        default=None,
        description="With sparsity: auto, the [low, high] range bisected; default [0, 0.95] for magnitude, "
        "[0, 0.9] for channel.",
    )
    search_steps: int = Field(
        default=6, ge=1, le=12, description="With sparsity: auto, bisection steps (resolution = range / 2^steps)."
    )
    scope: Literal["per_layer", "global"] = Field(
        default="per_layer",
        description="magnitude: per_layer gives every layer the same sparsity; global spends it over all layers "
        "together, more where it costs less (by magnitude; with reconstruct, by the cost to each layer's output).",
    )
    dense_first_last: bool = Field(
        default=True,
        description="magnitude: leave the first and the last prunable layer dense (they are sensitive); not applied "
        "when `nodes` names the layers to prune.",
    )
    reconstruct: bool = Field(
        default=False,
        description="With --calibration-data, fit the weights that stay to the layers' inputs on that data. "
        "magnitude: choose each layer's zeros by their cost to its output and adjust the rest to make up "
        "for them (SparseGPT). channel: cut the channels whose loss the following layers can best make up for, and "
        "refit those layers' weights on the channels kept to reproduce their old output (least squares). Without "
        "calibration data, plain pruning with a warning.",
    )
    norm: Literal["l1", "l2"] = Field(
        default="l1",
        description="channel: how output channels are ranked, unless reconstruct ranks them by their cost on the "
        "calibration data.",
    )
    op_types: list[Literal[PRUNABLE_OP_TYPES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(PRUNABLE_OP_TYPES), description="Op types whose weights are pruned."
    )
    nodes: list[str] = Field(
        default_factory=list, description="Only prune these nodes (names); empty = every node of op_types."
    )
    keep: list[str] = Field(default_factory=list, description="outputs: the graph outputs to keep.")
    exclude: ExcludeSpec = Field(default_factory=ExcludeSpec)

    @field_validator("sparsity")
    @classmethod
    def _sparsity_in_range(cls, sparsity: float | str | None) -> float | str | None:
        if isinstance(sparsity, float) and not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1) or auto, got {sparsity}")
        return sparsity

    @model_validator(mode="after")
    def _method_fields(self) -> PruneConfig:
        for name, methods in METHOD_FIELDS.items():
            if name in self.model_fields_set and self.method not in methods:
                raise ValueError(f"`{name}` does not apply to method {self.method} (only to {', '.join(methods)})")
        if self.method == "outputs":
            if not self.keep:
                raise ValueError("method outputs needs `keep`: the graph outputs to keep")
        elif self.sparsity is None:
            raise ValueError(f"method {self.method} needs `sparsity`: a fraction in [0, 1) or auto")
        elif self.sparsity == "auto":
            if self.accuracy_budget is None:
                raise ValueError("sparsity: auto needs `accuracy_budget` (largest allowed drop, in points)")
        else:
            misplaced = [name for name in AUTO_FIELDS if name in self.model_fields_set]
            if misplaced:
                raise ValueError(f"`{'`, `'.join(misplaced)}` only apply with sparsity: auto")
        if self.search_range is not None:
            low, high = self.search_range
            if not 0 <= low < high < 1:
                raise ValueError(f"search_range must satisfy 0 <= low < high < 1, got [{low}, {high}]")
        return self

    def range_searched(self) -> tuple[float, float]:
        return self.search_range or DEFAULT_SEARCH_RANGE[self.method]

    def reads_lazy_weights(self) -> bool:
        # Magnitude pruning reads and writes one weight at a time; channel surgery runs onnx's shape inference and an
        # in-memory session over the whole model, and output pruning is left as it was.
        return self.method == "magnitude"
