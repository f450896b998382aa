"""The registry of named graph rewrites and the driver that runs them to a fixed point, counting each one.

A rewrite is a pure function ``model -> (model, times_applied)``. Registration order is run order: folding
constants first exposes constant weights and shapes to the rewrites after it, and dropping unused nodes last
sweeps up what the others left behind. The driver repeats the whole sequence until a sweep changes nothing,
because one rewrite often enables another (a folded BatchNorm makes a following Mul foldable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import onnx

RewriteFn = Callable[[onnx.ModelProto], tuple[onnx.ModelProto, int]]
MAX_SWEEPS = 10  # real graphs settle in 2-3 sweeps; the cap only guards against two rewrites undoing each other


@dataclass(frozen=True)
class Rewrite:
    name: str
    summary: str
    apply: RewriteFn


_REWRITES: dict[str, Rewrite] = {}


def rewrite(name: str, summary: str) -> Callable[[RewriteFn], RewriteFn]:
    def decorate(fn: RewriteFn) -> RewriteFn:
        if name in _REWRITES:
            raise RuntimeError(f"rewrite {name!r} registered twice")
        _REWRITES[name] = Rewrite(name=name, summary=summary, apply=fn)
        return fn

    return decorate


def rewrites() -> dict[str, Rewrite]:
    return dict(_REWRITES)


def simplify(model: onnx.ModelProto, skip: Iterable[str] = ()) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Run every registered rewrite not in ``skip`` until none applies; returns the model and per-rewrite counts."""
    active = [r for r in _REWRITES.values() if r.name not in set(skip)]
    counts = {r.name: 0 for r in active}
    for _ in range(MAX_SWEEPS):
        changed = False
        for entry in active:
            model, applied = entry.apply(model)
            counts[entry.name] += applied
            changed = changed or applied > 0
        if not changed:
            break
    return model, counts
