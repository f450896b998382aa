"""Gates: bounds a pipeline sets on the result. A gate that could not be measured fails, so that a deploy never
passes on figures nobody took."""

from __future__ import annotations

from optc.recipe import Gates
from optc.report.schema import GateResult, ProviderMeasurement


def evaluate_gates(gates: Gates, size_ratio: float, measurements: list[ProviderMeasurement]) -> list[GateResult]:
    results = []
    if gates.max_size_ratio is not None:
        results.append(
            GateResult(
                name="max_size_ratio",
                bound=gates.max_size_ratio,
                measured=size_ratio,
                passed=size_ratio <= gates.max_size_ratio,
                detail=f"max_size_ratio: size ratio {size_ratio:.3f} (bound ≤ {gates.max_size_ratio:g})",
            )
        )
    measured = [m for m in measurements if m.measured]
    if gates.min_speedup is not None:
        results.extend(_per_provider("min_speedup", gates.min_speedup, measured, lambda m: m.speedup, at_least=True))
    if gates.max_accuracy_drop is not None:
        results.extend(
            _per_provider(
                "max_accuracy_drop",
                gates.max_accuracy_drop,
                measured,
                lambda m: m.accuracy.drop if m.accuracy else None,
                at_least=False,
            )
        )
    return results


def _per_provider(name, bound, measured, value_of, at_least: bool) -> list[GateResult]:
    if not measured:
        return [
            GateResult(
                name=name, bound=bound, measured=None, passed=False, detail=f"{name}: not measured on any provider"
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
                )
            )
            continue
        passed = value >= bound if at_least else value <= bound
        relation = "≥" if at_least else "≤"
        results.append(
            GateResult(
                name=f"{name}[{m.provider}]",
                bound=bound,
                measured=value,
                passed=passed,
                detail=f"{name} on {m.provider}: {value:.3f} (bound {relation} {bound:g})",
            )
        )
    return results
