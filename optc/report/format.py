"""Number formatting shared by every rendering of the report."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from optc.measure.accuracy import OutputFidelity
    from optc.measure.latency import LatencyStats
    from optc.pipeline import PassRecord
    from optc.report.schema import ProviderMeasurement, Report


def human_bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def top1_agreement_text(output: OutputFidelity) -> str:
    """``99.00 %``, with the samples the original all but tied that count as agreeing (``1 tie``); ``—`` for outputs
    that are no class scores."""
    if output.top1_agreement is None:
        return "—"
    ties = f" ({output.top1_ties} tie{'s' if output.top1_ties > 1 else ''})" if output.top1_ties else ""
    return f"{output.top1_agreement:.2f} %{ties}"


def pass_title(record: PassRecord) -> str:
    """A pass's label in the passes table; an optional pass that was skipped says so (its reason is a warning)."""
    return f"{record.label} (skipped)" if record.skipped else record.label


def speed_change(speedup: float) -> str:
    """``1.23× faster`` or ``1.11× slower``: a slowdown is never called a speed-up below 1."""
    if speedup >= 1:
        return f"{speedup:.2f}× faster"
    return f"{1 / speedup:.2f}× slower"


def is_table(value: object) -> bool:
    """Pass details that are a list of records are shown as tables of their own."""
    return isinstance(value, list) and bool(value) and all(isinstance(row, dict) for row in value)


def table_columns(rows: list[dict]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def cell(value: object) -> str:
    """A value as table text: floats to 4 significant digits, lists and mappings spelled out, never Python reprs."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "; ".join(f"{key}: {cell(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(cell(item) for item in value)
    return "" if value is None else str(value)


def inline_details(details: dict) -> str:
    """The details of a pass that are not tables of their own, as ``key: value`` pairs."""
    return "; ".join(f"{k}: {cell(v)}" for k, v in details.items() if not is_table(v) and v not in ([], {}, None))


def where_measured(report: Report) -> list[tuple[str, str]]:
    """(label, text) rows saying which machine the model is for and which CPU measured it."""
    env = report.environment
    features = ", ".join(env.cpu_features) or "no AVX2/AVX-512/VNNI/dot-product"
    rows = [("measured on", f"{env.cpu_isa or 'unknown'}: {env.cpu} ({features})")]
    if report.target is not None:
        t = report.target
        rows.insert(0, ("target", t.name + (" (auto: the CPU optc ran on)" if t.requested == "auto" else "")))
        if t.warning:
            rows.append(("warning", t.warning))
    return rows


def compressed_sizes(report: Report) -> list[tuple[int, int]]:
    """(before, after) gzip sizes a pass reported: where unstructured sparsity shows, since the file size does not
    change. The first pass's "before" and the last pass's "after" span the whole recipe."""
    found = [p.details for p in report.passes if "gzip_bytes_before" in p.details and "gzip_bytes_after" in p.details]
    return [(found[0]["gzip_bytes_before"], found[-1]["gzip_bytes_after"])] if found else []


class LatencyLine(NamedTuple):
    key: str  # "" for the one row of a plain model, the phase for a decoder
    label: str
    original: LatencyStats
    optimized: LatencyStats
    speedup: float


def latency_rows(m: ProviderMeasurement) -> list[LatencyLine]:
    """A provider's latency lines: one, or for a decoder the prefill and the decode step."""
    if m.decoder is None:
        return [LatencyLine("", "p50 latency", m.original, m.optimized, m.speedup)]
    phases = (
        ("prefill", f"prefill {m.decoder.prefill.tokens} tokens", m.decoder.prefill),
        ("decode", f"decode step, cache {m.decoder.decode.tokens}", m.decoder.decode),
    )
    return [LatencyLine(key, label, p.original, p.optimized, p.speedup) for key, label, p in phases]


def timing_order(m: ProviderMeasurement) -> str:
    if m.interleaved:
        return "original and optimized interleaved"
    return "original, then optimized (one session at a time: together they would hold the model twice)"
