"""Gates: bounds a pipeline sets on the result. A gate that could not be measured fails, so that a deploy never
passes on figures nobody took.

The bounds come from the recipe's ``gates``, the command line (which wins), and the passes themselves: a pass that
promises an accuracy budget (``accuracy_budget``) makes that budget a gate on the finished model, because later
passes add their own error and the promise is about what gets shipped. Budgets are drops against the recipe's input,
so the last pass that promises one speaks for the model (prune-auto prunes within 0.5 points, then int8 within 1).
"""

from __future__ import annotations

from optc.pipeline import PassRecord
from optc.recipe import Gates, Recipe
from optc.report.schema import GateResult, ProviderMeasurement


def effective_gates(recipe: Recipe, overrides: dict[str, float]) -> tuple[Gates, dict[str, str]]:
    """The gates to apply and, for each that is set, where its bound came from."""
    bounds = recipe.gates.model_dump()
    sources = {name: "recipe gates" for name, value in bounds.items() if value not in (None, False)}
    budgets = [(config.promised_drop(), index) for index, config in enumerate(recipe.passes)]
    promised = [(drop, index) for drop, index in budgets if drop is not None]
    if promised:
        drop, index = promised[-1]
        if bounds["max_accuracy_drop"] is None or drop < bounds["max_accuracy_drop"]:
            bounds["max_accuracy_drop"] = drop
            sources["max_accuracy_drop"] = f"passes[{index}].accuracy_budget"
    for name, value in overrides.items():
        bounds[name] = value
        sources[name] = f"--{name.replace('_', '-')}"
    return Gates.model_validate(bounds), sources


def evaluate_gates(
    gates: Gates,
    size_ratio: float,
    measurements: list[ProviderMeasurement],
    records: list[PassRecord],
    sources: dict[str, str] | None = None,
    evaluated_on_synthetic: bool = False,
) -> list[GateResult]:
    sources = sources or {}
    results = []
    if gates.require_evaluation_data:
        results.append(
            _requirement(
                "require_evaluation_data",
                "accuracy was measured on synthetic inputs, which say little about how this recipe changes real "
                "outputs (give --data)"
                if evaluated_on_synthetic
                else None,
                "accuracy measured on the data given",
                sources,
            )
        )
    if gates.require_calibration_data:
        synthetic = [r.label for r in records if r.calibrated_on == "synthetic"]
        results.append(
            _requirement(
                "require_calibration_data",
                f"{', '.join(synthetic)} calibrated on synthetic inputs, so accuracy on real inputs is unknown "
                "(give --calibration-data)"
                if synthetic
                else None,
                "every static pass calibrated on the data given",
                sources,
            )
        )
    if gates.max_size_ratio is not None:
        results.append(
            GateResult(
                name="max_size_ratio",
                bound=gates.max_size_ratio,
                measured=size_ratio,
                passed=size_ratio <= gates.max_size_ratio,
                detail=f"max_size_ratio: size ratio {size_ratio:.3f} (bound ≤ {gates.max_size_ratio:g})",
                source=sources.get("max_size_ratio"),
            )
        )
    measured = [m for m in measurements if m.measured]
    if gates.min_speedup is not None:
        results.extend(
            _per_provider(
                "min_speedup", gates.min_speedup, measured, lambda m: m.speedup, True, sources.get("min_speedup")
            )
        )
    if gates.min_cosine is not None:
        results.extend(
            _per_provider(
                "min_cosine",
                gates.min_cosine,
                measured,
                lambda m: m.accuracy.min_cosine if m.accuracy else None,
                True,
                sources.get("min_cosine"),
            )
        )
    if gates.max_accuracy_drop is not None:
        results.extend(
            _per_provider(
                "max_accuracy_drop",
                gates.max_accuracy_drop,
                measured,
                lambda m: m.accuracy.drop if m.accuracy else None,
                False,
                sources.get("max_accuracy_drop"),
            )
        )
    return results


def _requirement(name: str, failure: str | None, fine: str, sources: dict[str, str]) -> GateResult:
    """A yes/no gate: it fails with ``failure`` when one is given (measured 0 against a bound of 1)."""
    return GateResult(
        name=name,
        bound=1,
        measured=0 if failure else 1,
        passed=not failure,
        detail=f"{name}: {failure or fine}",
        source=sources.get(name),
    )


def _per_provider(name, bound, measured, value_of, at_least: bool, source: str | None) -> list[GateResult]:
    if not measured:
        return [
            GateResult(
                name=name,
                bound=bound,
                measured=None,
                passed=False,
                detail=f"{name}: not measured on any provider",
                source=source,
            )
        ]
    results = []
    for m in measured:
        value = value_of(m)
        if value is None:
            results.append(
                GateResult(
                    name=f"{name}[{m.provider}]",
                    bound=bound,
                    measured=None,
                    passed=False,
                    detail=f"{name} on {m.provider}: not measured",
                    source=source,
                )
            )
            continue
        passed = value >= bound if at_least else value <= bound
        relation = "≥" if at_least else "≤"
        origin = f", from {source}" if source else ""
        shown = f"{value:.4f}" if name == "min_cosine" else f"{value:.3f}"
        results.append(
            GateResult(
                name=f"{name}[{m.provider}]",
                bound=bound,
                measured=value,
                passed=passed,
                detail=f"{name} on {m.provider}: {shown} (bound {relation} {bound:g}{origin})",
                source=source,
            )
        )
    return results
