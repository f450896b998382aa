"""The ``exclude:`` block every pass shares: node names, regular expressions on names, and op types.

A name, pattern or op type that matches nothing is an error: it is almost always a typo, and silently quantizing a
node the user meant to keep in float is worse than stopping.
"""

from __future__ import annotations

import re

import onnx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from optc.errors import OptcError


class ExcludeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: list[str] = Field(default_factory=list, description="Exact node names to leave untouched.")
    patterns: list[str] = Field(
        default_factory=list, description="Regular expressions; a node whose name matches any (re.search) is left."
    )
    op_types: list[str] = Field(default_factory=list, description="Op types to leave untouched, e.g. Conv.")

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        return patterns

    def is_empty(self) -> bool:
        return not (self.nodes or self.patterns or self.op_types)


def excluded_nodes(graph: onnx.GraphProto, spec: ExcludeSpec, label: str) -> set[str]:
    """Names of the graph's nodes the spec excludes; raises if any entry matches nothing."""
    names = [n.name for n in graph.node]
    op_types = {n.op_type for n in graph.node}
    unknown = [n for n in spec.nodes if n not in set(names)]
    if unknown:
        raise OptcError(
            f"{label}.exclude.nodes: no node named {', '.join(map(repr, unknown))} in the model",
            hint="`optc inspect MODEL --nodes` lists node names",
        )
    for pattern in spec.patterns:
        if not any(re.search(pattern, n) for n in names):
            raise OptcError(f"{label}.exclude.patterns: {pattern!r} matches no node name in the model")
    missing_ops = [op for op in spec.op_types if op not in op_types]
    if missing_ops:
        raise OptcError(
            f"{label}.exclude.op_types: the model has no {', '.join(missing_ops)} node",
            hint=f"op types present: {', '.join(sorted(op_types))}",
        )
    return {
        node.name
        for node in graph.node
        if node.name in spec.nodes
        or node.op_type in spec.op_types
        or any(re.search(p, node.name) for p in spec.patterns)
    }
