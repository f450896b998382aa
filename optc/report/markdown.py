"""report.md: the same report for people reading a build log or a pull request."""

from __future__ import annotations

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
from optc.report.schema import Report


def render_markdown(report: Report) -> str:
    lines = [
        f"# optc report: {report.optimized.path}",
        "",
        f"Recipe `{report.recipe.source}`"
        + (f" ({report.recipe.name})" if report.recipe.name else "")
        + f", from `{report.original.path}`.",
        "",
        *(f"- {label}: {text}" for label, text in where_measured(report)),
        "",
        "## Summary",
        "",
        "| | original | optimized | change |",
        "|---|---:|---:|---:|",
        f"| size | {human_bytes(report.original.size_bytes)} | {human_bytes(report.optimized.size_bytes)} | "
        f"{report.size_ratio:.3f}× |",
        *(
            f"| gzip size | {human_bytes(before)} | {human_bytes(after)} | {after / before:.3f}× |"
            for before, after in compressed_sizes(report)
        ),
        f"| parameters | {report.original.parameters:,} | {report.optimized.parameters:,} | |",
        f"| nodes | {report.original.nodes} | {report.optimized.nodes} | |",
    ]
    for m in report.measured():
        for line in latency_rows(m):
            lines.append(
                f"| {m.provider} {line.label} (batch {m.batch_size}, {m.threads} thread(s)) | "
                f"{line.original.p50_ms:.3f} ms | {line.optimized.p50_ms:.3f} ms | {speed_change(line.speedup)} |"
            )
        if m.decoder is not None:
            lines.append(
                f"| {m.provider} next-token top-1 agreement ({m.decoder.positions} positions) | 100.00 % | "
                f"{m.decoder.next_token_agreement:.2f} % | |"
            )
            if m.decoder.perplexity_original is not None:
                lines.append(
                    f"| {m.provider} perplexity | {m.decoder.perplexity_original:.3f} | "
                    f"{m.decoder.perplexity_optimized:.3f} | |"
                )
        if m.accuracy:
            a = m.accuracy
            lines.append(
                f"| {m.provider} {a.metric} ({a.samples} samples) | {a.original:.2f} % | {a.optimized:.2f} % | "
                f"{0.0 - a.drop:+.2f} points |"
            )
    lines += [""] + [f"**{m.provider}: not measured** — {m.reason}" for m in report.measurements if not m.measured]
    lines += ["", "## Gates", ""]
    if report.gates:
        lines += ["| gate | measured | bound | result |", "|---|---:|---:|---|"]
        for g in report.gates:
            measured = f"{g.measured:.3f}" if g.measured is not None else "not measured"
            lines.append(f"| {g.name} | {measured} | {g.bound:g} | {'pass' if g.passed else '**FAIL**'} |")
    else:
        lines.append("No gates set.")
    lines += ["", "## Passes", "", "| # | pass | time | size | nodes | details |", "|---|---|---:|---|---|---|"]
    for p in report.passes:
        details = inline_details(p.details)
        lines.append(
            f"| {p.index} | {pass_title(p)} | {p.wall_s:.2f} s | "
            f"{human_bytes(p.size_before)} → {human_bytes(p.size_after)} | "
            f"{p.nodes_before} → {p.nodes_after} | {details} |"
        )
    for p in report.passes:
        for key, rows in p.details.items():
            if is_table(rows):
                columns = table_columns(rows)
                lines += ["", f"### {p.label}: {key.replace('_', ' ')}", ""]
                lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    lines += ["", "## Latency", ""]
    for m in report.measured():
        lines += [
            f"{m.provider}: batch {m.batch_size}, {m.threads} intra-op thread(s), {m.warmup} warm-up runs, "
            f"{timing_order(m)}.",
            "",
            "| model | runs | p50 ms | p90 ms | p99 ms | mean ms | stdev ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, s in (("original", m.original), ("optimized", m.optimized)):
            lines.append(
                f"| {name} | {s.runs} | {s.p50_ms:.3f} | {s.p90_ms:.3f} | {s.p99_ms:.3f} | {s.mean_ms:.3f} | "
                f"{s.stdev_ms:.3f} |"
            )
        lines.append("")
    measured = report.measured()
    if measured and measured[0].accuracy:
        a = measured[0].accuracy
        lines += [
            "## Fidelity",
            "",
            f"Optimized vs original on {a.samples} samples of {a.data}.",
            "",
            "| output | cosine | max abs error | mean abs error | top-1 agreement |",
            "|---|---:|---:|---:|---:|",
        ]
        for o in a.outputs:
            lines.append(
                f"| {o.name} | {o.cosine:.6f} | {o.max_abs_error:.4g} | {o.mean_abs_error:.4g} "
                f"| {top1_agreement_text(o)} |"
            )
        lines.append("")
    if report.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report.warnings] + [""]
    env = report.environment
    lines += [
        "## Environment",
        "",
        f"optc {env.optc}, onnx {env.onnx}, onnxruntime {env.onnxruntime}, numpy {env.numpy}, Python {env.python}; "
        f"{env.cpu} ({env.cpu_count} logical CPUs), {env.platform}; providers available: "
        f"{', '.join(env.providers_available)}.",
        "",
    ]
    return printable("\n".join(lines))
