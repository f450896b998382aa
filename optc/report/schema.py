"""The report model. ``report.json`` is this model dumped; bump ``SCHEMA_VERSION`` on any incompatible change."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ValidationError

from optc.errors import OptcError
from optc.measure.accuracy import AccuracyResult
from optc.measure.decoder import DecoderMeasurement
from optc.measure.environment import Environment
from optc.measure.latency import LatencyStats
from optc.measure.profile import ProfileComparison
from optc.pipeline import PassRecord

SCHEMA_VERSION = 1
MAX_REPORT_BYTES = 256 << 20


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
    profile: ProfileComparison | None = None  # per op type time, original vs optimized (compress --profile)
    # For decoders (input_ids + KV cache + logits): prefill and decode-step latency, next-token agreement,
    # perplexity. original/optimized/speedup above are then the decode step's.
    decoder: DecoderMeasurement | None = None
    # False when the two models were too large to hold at once and were timed one after the other.
    interleaved: bool = True


class TargetInfo(BaseModel):
    """The machine the model was compressed for, and whether the figures were measured on one like it."""

    requested: str  # as the recipe or --target named it (auto: the CPU optc ran on)
    name: str  # what it resolved to
    measured_on: str  # the target the measuring CPU is an instance of
    warning: str | None = None  # why the figures will not hold on the target; None when they do


class GateResult(BaseModel):
    name: str
    bound: float
    measured: float | None
    passed: bool
    detail: str
    source: str | None = None  # where the bound came from: recipe gates, --max-accuracy-drop, passes[i].accuracy_budget


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
    target: TargetInfo | None = None  # None in reports from optc before targets existed

    def measured(self) -> list[ProviderMeasurement]:
        return [m for m in self.measurements if m.measured]


def report_json_schema() -> dict:
    """The JSON Schema of report.json, as ``optc report schema`` prints it."""
    schema = Report.model_json_schema()
    schema["title"] = "optc report"
    schema["description"] = (
        f"report.json written by optc compress, schema_version {SCHEMA_VERSION}. Fields may be added within a "
        "version; a change that breaks readers bumps schema_version."
    )
    return schema


def load_report(path: Path) -> Report:
    """Read a saved report.json; refuse files from a newer optc or that do not fit the schema, naming the field."""
    path = Path(path)
    if not path.is_file():
        raise OptcError(f"{path}: no such report file")
    if path.stat().st_size > MAX_REPORT_BYTES:
        raise OptcError(f"{path}: {path.stat().st_size:,} bytes is larger than any report optc writes")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OptcError(f"{path}: not a readable JSON file ({exc})") from exc
    except RecursionError:
        raise OptcError(f"{path}: nested too deeply to be a report") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if not isinstance(version, int):
        raise OptcError(f"{path}: no schema_version; is this an optc report.json?")
    if version > SCHEMA_VERSION:
        raise OptcError(
            f"{path}: schema_version {version} is newer than this optc reads ({SCHEMA_VERSION})",
            hint="upgrade optc to show it",
        )
    try:
        return Report.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise OptcError(f"{path}: {where}: {first['msg']}", hint="is this an optc report.json?") from exc
    except RecursionError:
        raise OptcError(f"{path}: nested too deeply to be a report") from None
