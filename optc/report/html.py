"""report.html: the report as one self-contained page (inline CSS and SVG; no script, font or network request).

Summary cards first, then a latency chart per provider, the per-op-type profile when there is one, the passes with
their detail tables and — when a pass left them — its sensitivity ranking and sparsity curve as charts.
"""

from __future__ import annotations

from html import escape

from optc.measure.latency import LatencyStats
from optc.messages import printable
from optc.report.format import (
    cell,
    compressed_sizes,
    human_bytes,
    inline_details,
    is_table,
    latency_rows,
    pass_title,
    speed_change,
    table_columns,
    timing_order,
    top1_agreement_text,
    where_measured,
)
from optc.report.schema import ProviderMeasurement, Report
from optc.report.svg import LatencyRow, bar_chart, grouped_bar_chart, latency_chart, line_chart

PROFILE_OPS_SHOWN = 12
SENSITIVITY_NODES_SHOWN = 25

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:15px}.muted{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:12px 16px;min-width:150px}
.card .value{font-size:24px;font-weight:600}.card .label{font-size:12px;color:#666}
.good{color:#2e7d32}.bad{color:#c62828}.warn{color:#b26a00}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f6f6f6}svg.chart{display:block;margin:8px 0;max-width:100%;height:auto}
"""


def render_html(report: Report) -> str:
    sections = [
        f"<h1>optc report: {escape(report.optimized.path)}</h1>",
        f'<p class="muted">from {escape(report.original.path)} with recipe {escape(report.recipe.source)}'
        + (f" ({escape(report.recipe.name)})" if report.recipe.name else "")
        + f"; data: {escape(report.data)}</p>",
        _cards(report),
        _latency(report),
        _profiles(report),
        _passes(report),
        _gates(report),
        _fidelity(report),
        _warnings(report),
        _environment(report),
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>optc report: {escape(report.optimized.path)}</title><style>{STYLE}</style></head>"
        "<body>" + "\n".join(s for s in sections if s) + "</body></html>\n"
    )
    return printable(page)


def _card(value: str, label: str, tone: str = "") -> str:
    return (
        f'<div class="card"><div class="value {tone}">{escape(value)}</div>'
        f'<div class="label">{escape(label)}</div></div>'
    )


def _cards(report: Report) -> str:
    cards = [
        _card(
            f"{report.size_ratio:.3f}×",
            f"size {human_bytes(report.original.size_bytes)} → {human_bytes(report.optimized.size_bytes)}",
            "good" if report.size_ratio < 1 else "",
        )
    ]
    for before, after in compressed_sizes(report):
        cards.append(_card(f"{after / before:.3f}×", f"gzip size {human_bytes(before)} → {human_bytes(after)}"))
    for m in report.measurements:
        if not m.measured:
            cards.append(_card("not measured", f"{m.provider}: {m.reason}", "warn"))
            continue
        for line in latency_rows(m):
            label = f"{m.provider} {line.label} (batch {m.batch_size})"
            cards.append(_card(speed_change(line.speedup), label, _tone(line.speedup >= 1)))
        if m.decoder is not None:
            cards.append(
                _card(
                    f"{m.decoder.next_token_agreement:.2f} %",
                    f"{m.provider} next-token top-1 agreement over {m.decoder.positions} positions",
                )
            )
        if m.accuracy:
            a = m.accuracy
            cards.append(
                _card(f"{0.0 - a.drop:+.2f} pts", f"{m.provider} {a.metric} {a.original:.2f} → {a.optimized:.2f}")
            )
    if report.gates:
        passed = sum(g.passed for g in report.gates)
        cards.append(_card(f"{passed}/{len(report.gates)}", "gates passed", _tone(report.gates_passed)))
    return '<div class="cards">' + "".join(cards) + "</div>"


def _tone(good: bool) -> str:
    return "good" if good else "bad"


def _latency(report: Report) -> str:
    measured = report.measured()
    if not measured:
        return ""
    parts = ["<h2>Latency</h2>"]
    for m in measured:
        parts.append(f'<p class="muted">{escape(m.provider)}: {escape(timing_order(m))}</p>')
        for line in latency_rows(m):
            pair = (("original", line.original), ("optimized", line.optimized))
            phase = f"{line.label}, " if line.key else ""
            title = f"{m.provider}: {phase}latency per run (ms), batch {m.batch_size}, {m.threads} thread(s)"
            chart_id = "-".join(filter(None, ("latency", m.provider, line.key)))
            chart = latency_chart(chart_id, title, [_latency_row(n, s) for n, s in pair])
            parts += [f"<h3>{escape(title)}</h3>", chart]
            parts.append(
                _table(
                    ["model", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "stdev ms", "cv"],
                    [[n, s.runs, s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms, s.stdev_ms, s.cv] for n, s in pair],
                )
            )
    return "".join(parts)


def _latency_row(label: str, s: LatencyStats) -> LatencyRow:
    return LatencyRow(label, s.min_ms, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.mean_ms)


def _profiles(report: Report) -> str:
    parts = []
    for m in report.measured():
        if m.profile is None:
            continue
        parts.append(_profile(m))
    return ("<h2>Where the time goes (per op type)</h2>" + "".join(parts)) if parts else ""


def _profile(m: ProviderMeasurement) -> str:
    ops = m.profile.ops[:PROFILE_OPS_SHOWN]
    title = f"{m.provider}: share of node time per op type, original vs optimized"
    chart = grouped_bar_chart(
        f"profile-{m.provider}",
        title,
        [o.op_type for o in ops],
        {"original": [100 * o.before_share for o in ops], "optimized": [100 * o.after_share for o in ops]},
        unit="%",
    )
    table = _table(
        ["op type", "original ms/run", "optimized ms/run", "original share", "optimized share"],
        [[o.op_type, o.before_ms, o.after_ms, f"{o.before_share:.1%}", f"{o.after_share:.1%}"] for o in m.profile.ops],
    )
    return f"<h3>{escape(title)}</h3>{chart}{table}"


def _passes(report: Report) -> str:
    parts = [
        "<h2>Passes</h2>",
        _table(
            ["#", "pass", "time", "size", "nodes", "details"],
            [
                [
                    p.index,
                    pass_title(p),
                    f"{p.wall_s:.2f} s",
                    f"{human_bytes(p.size_before)} → {human_bytes(p.size_after)}",
                    f"{p.nodes_before} → {p.nodes_after}",
                    inline_details(p.details),
                ]
                for p in report.passes
            ],
        ),
    ]
    for p in report.passes:
        parts += _pass_charts(p.label, p.details)
        for key, rows in p.details.items():
            if is_table(rows):
                columns = table_columns(rows)
                parts.append(f"<h3>{escape(p.label)}: {escape(key.replace('_', ' '))}</h3>")
                parts.append(_table(columns, [[row.get(c) for c in columns] for row in rows]))
    return "".join(parts)


def _pass_charts(label: str, details: dict) -> list[str]:
    """Charts for the details passes are known to leave: a sensitivity ranking and a sparsity curve."""
    parts = []
    sensitivity = details.get("sensitivity")
    if is_table(sensitivity):
        name_key, value_key = _label_key(sensitivity), _value_key(sensitivity)
        if name_key and value_key:
            kept = details.get("kept_in_float")
            highlight = frozenset(kept) if isinstance(kept, list) and all(isinstance(k, str) for k in kept) else ()
            ranked = sorted(sensitivity, key=lambda row: -float(row[value_key]))[:SENSITIVITY_NODES_SHOWN]
            title = f"{label}: sensitivity per node ({value_key})" + (", red: kept in float" if highlight else "")
            items = [(str(row[name_key]), float(row[value_key])) for row in ranked]
            parts += [f"<h3>{escape(title)}</h3>", bar_chart("sensitivity", title, items, highlight=highlight)]
    curve = details.get("curve")
    if is_table(curve) and all("sparsity" in row for row in curve):
        points = sorted(curve, key=lambda row: row["sparsity"])
        series = {
            key: [float(row[key]) for row in points]
            for key in table_columns(points)
            if key != "sparsity" and all(_is_number(row.get(key)) for row in points)
        }
        if series:
            title = f"{label}: sparsity vs " + ", ".join(series)
            xs = [float(row["sparsity"]) for row in points]
            parts += [f"<h3>{escape(title)}</h3>", line_chart("curve", title, "sparsity", xs, series)]
    return parts


def _label_key(rows: list[dict]) -> str | None:
    for key in ("node", "name", *table_columns(rows)):
        if all(isinstance(row.get(key), str) for row in rows):
            return key
    return None


def _value_key(rows: list[dict]) -> str | None:
    for key in ("error", "drop", "sensitivity", *table_columns(rows)):
        if all(_is_number(row.get(key)) for row in rows):
            return key
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _gates(report: Report) -> str:
    if not report.gates:
        return "<h2>Gates</h2><p>No gates set.</p>"
    rows = [
        [g.name, g.measured if g.measured is not None else "not measured", g.bound, "pass" if g.passed else "FAIL"]
        for g in report.gates
    ]
    return "<h2>Gates</h2>" + _table(["gate", "measured", "bound", "result"], rows)


def _fidelity(report: Report) -> str:
    measured = [m for m in report.measured() if m.accuracy]
    if not measured:
        return ""
    a = measured[0].accuracy
    rows = [
        [o.name, o.cosine, o.sqnr_db, o.max_abs_error, o.mean_abs_error, top1_agreement_text(o), o.top5_agreement]
        for o in a.outputs
    ]
    return f"<h2>Fidelity</h2><p>Optimized vs original on {a.samples} samples of {escape(a.data)}.</p>" + _table(
        ["output", "cosine", "SQNR dB", "max abs error", "mean abs error", "top-1 agr. %", "top-5 agr. %"], rows
    )


def _warnings(report: Report) -> str:
    if not report.warnings:
        return ""
    return "<h2>Warnings</h2><ul>" + "".join(f"<li>{escape(w)}</li>" for w in report.warnings) + "</ul>"


def _environment(report: Report) -> str:
    env = report.environment
    rows = [
        ["optc / onnx / onnxruntime", f"{env.optc} / {env.onnx} / {env.onnxruntime}"],
        ["numpy / Python", f"{env.numpy} / {env.python}"],
        *([label, text] for label, text in where_measured(report)),
        ["CPU", f"{env.cpu} ({env.cpu_count} logical CPUs)"],
        ["platform", env.platform],
        ["providers available", ", ".join(env.providers_available)],
    ]
    if env.gpu:
        g = env.gpu
        rows.append(["GPU", f"{g.name or 'unknown'} (driver {g.driver or '?'})"])
        rows.append(["CUDA / cuDNN", f"{g.cuda_version or '?'} / {g.cudnn_version or '?'}"])
    return "<h2>Environment</h2>" + _table(["", ""], rows)


def _table(columns: list[str], rows: list[list[object]]) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_td(value) for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: object) -> str:
    if _is_number(value):
        return f'<td class="num">{escape(cell(value))}</td>'
    return f"<td>{escape(cell(value))}</td>"
