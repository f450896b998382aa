"""The pass interface and the registry keyed by a recipe pass's ``type``.

A pass is a pydantic config model (its recipe block, validated with ``extra="forbid"``) plus one function
``run(model, config, context) -> PassOutcome``. Registering both under the config's ``type`` is all it takes for
the recipe schema, validation and the pipeline to know about it.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from optc.data import Dataset
from optc.target import detect_cpu


class PassConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    optional: bool = Field(
        default=False,
        description="Go on without this pass when it can do nothing for the model (nothing it works on, or no "
        "result within its accuracy budget); the report shows it skipped and why. A recipe whose skipped passes leave "
        "none that compresses the model (only fusion) is refused.",
    )

    def compresses(self) -> bool:
        """Whether the pass makes the model smaller or cheaper (pruning, quantization), not only simpler (fusion): a
        recipe whose optional passes were skipped and left none that does is refused."""
        return True

    def data_files(self) -> dict[str, Path]:
        """Data the pass reads, by its field path in the pass's block (``calibration.data``), as written."""
        return {}

    def reads_lazy_weights(self) -> bool:
        """Whether the pass reads weights only through ``optc.tensors.tensor_values`` and hands models to ONNX
        Runtime only through files, so weights may stay on disk; the pipeline reads them in first for passes that
        cannot."""
        return False

    def refuse_input(self, model: onnx.ModelProto, label: str) -> None:
        """Raise ``OptcError`` for an input model the pass cannot take at all; the pipeline asks every pass before
        any runs, so such a model is refused before work that a later pass would throw away."""

    def promised_drop(self) -> float | None:
        """The accuracy budget the pass promises to stay within, in points; None when it promises none."""
        return getattr(self, "accuracy_budget", None)


@dataclass
class PassContext:
    """What a pass may use besides the model: never the terminal, never files outside ``workdir``."""

    label: str  # e.g. "passes[1] quantize (dynamic)": used in messages so users find the block in their recipe
    workdir: Path  # a private temporary folder that is removed after the run
    seed: int
    # Evaluation data (labelled or not), else seeded synthetic inputs; passes that search against an accuracy
    # budget evaluate on it with ``metric``.
    dataset: Dataset
    metric: Literal["auto", "top1", "fidelity"] = "auto"
    # --calibration-data from the command line; wins over a pass's own data path.
    calibration_data: Path | None = None
    # Folder that relative paths inside the recipe are resolved against (None for built-in recipes: the cwd).
    recipe_dir: Path | None = None
    # Inputs used to check each pass's result (the first evaluation batch).
    sample_inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    # The batch size the model is measured (and deployed) at; accuracy is evaluated at it.
    batch_size: int = 1
    # The machine the model is for (a name from optc.target.TARGETS, never "auto"): passes take defaults from it.
    target: str = field(default_factory=lambda: detect_cpu().isa)
    # The model the recipe started from. Accuracy budgets are measured against it: the budget a pass promises is a
    # gate on the finished model, so a pass after another that spent some (pruning, then int8) has only the rest.
    pipeline_input: onnx.ModelProto | None = None

    def resolve(self, path: Path) -> Path:
        """A path written in the recipe, made absolute against the recipe's folder."""
        return path if path.is_absolute() else (self.recipe_dir or Path.cwd()) / path


@dataclass
class PassOutcome:
    model: onnx.ModelProto
    details: dict[str, Any] = field(default_factory=dict)  # pass-specific facts for the report
    warnings: list[str] = field(default_factory=list)
    calibrated_on: str | None = None  # the calibration data a pass fitted ranges on: a path, or "synthetic"


ConfigT = TypeVar("ConfigT", bound=PassConfig)
RunFn = Callable[[onnx.ModelProto, ConfigT, PassContext], PassOutcome]


@dataclass(frozen=True)
class RegisteredPass(Generic[ConfigT]):
    type: str
    config_cls: type[ConfigT]
    run: RunFn


_REGISTRY: dict[str, RegisteredPass] = {}


def pass_type_of(config_cls: type[PassConfig]) -> str:
    annotation = config_cls.model_fields["type"].annotation
    (value,) = typing.get_args(annotation)
    return value


def register(config_cls: type[ConfigT]) -> Callable[[RunFn], RunFn]:
    """Decorate a pass's run function: ``@register(FuseConfig) def run_fuse(model, config, context): ...``."""

    def decorate(run: RunFn) -> RunFn:
        pass_type = pass_type_of(config_cls)
        if pass_type in _REGISTRY:
            raise RuntimeError(f"pass type {pass_type!r} registered twice")
        _REGISTRY[pass_type] = RegisteredPass(type=pass_type, config_cls=config_cls, run=run)
        return run

    return decorate


def registered_passes() -> dict[str, RegisteredPass]:
    return dict(_REGISTRY)


def lookup(pass_type: str) -> RegisteredPass:
    return _REGISTRY[pass_type]


def describe(config: PassConfig) -> str:
    """A short label for tables: the type plus its mode or method where it has one."""
    pass_type = pass_type_of(type(config))
    variant = getattr(config, "mode", None) or getattr(config, "method", None)
    return f"{pass_type} ({variant})" if variant else pass_type
