"""The report model. ``report.json`` is this model dumped; bump ``SCHEMA_VERSION`` on any incompatible change."""

from __future__ import annotations

from pydantic import BaseModel

from optc.measure.accuracy import AccuracyResult
from optc.measure.environment import Environment
from optc.measure.latency import LatencyStats
from optc.pipeline import PassRecord

SCHEMA_VERSION = 1


class ModelInfo(BaseModel):
    path: str
    size_bytes: int
    parameters: int
    nodes: int
    sha256: str | None = None


class RecipeInfo(BaseModel):
    source: str
    name: str | None
    sha256: str


class ProviderMeasurement(BaseModel):
    """Figures for one execution provider; ``measured`` is false (with a reason) rather than ever showing
    figures from another provider under this one's name."""

    provider: str
    measured: bool
    reason: str | None = None
    batch_size: int
    threads: int
    warmup: int
    original: LatencyStats | None = None
    optimized: LatencyStats | None = None
    speedup: float | None = None  # original p50 / optimized p50
    accuracy: AccuracyResult | None = None


class GateResult(BaseModel):
    name: str
    bound: float
    measured: float | None
    passed: bool
    detail: str


class Report(BaseModel):
    schema_version: int = SCHEMA_VERSION
    optc_version: str
    recipe: RecipeInfo
    original: ModelInfo
    optimized: ModelInfo
    size_ratio: float  # optimized / original
    passes: list[PassRecord]
    data: str  # evaluation data file, or "synthetic"
    measurements: list[ProviderMeasurement]
    gates: list[GateResult]
    gates_passed: bool
    warnings: list[str]
    environment: Environment

    def measured(self) -> list[ProviderMeasurement]:
        return [m for m in self.measurements if m.measured]
