"""Rich renderings of optc's results for the terminal."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from optc.model_facts import ModelSummary
from optc.report.format import cell, human_bytes, is_table, table_columns
from optc.report.schema import Report


def report_view(report: Report) -> Group:
    summary = Table(title=f"optc: {report.original.path} → {report.optimized.path}", title_justify="left")
    summary.add_column("")
    summary.add_column("original", justify="right")
    summary.add_column("optimized", justify="right")
    summary.add_column("change", justify="right")
    summary.add_row(
        "size",
        human_bytes(report.original.size_bytes),
        human_bytes(report.optimized.size_bytes),
        f"{report.size_ratio:.3f}×",
    )
    summary.add_row("parameters", f"{report.original.parameters:,}", f"{report.optimized.parameters:,}", "")
    summary.add_row("nodes", str(report.original.nodes), str(report.optimized.nodes), "")
    for m in report.measurements:
        if not m.measured:
            summary.add_row(f"{m.provider}", Text(f"not measured — {m.reason}", style="yellow"), "", "")
            continue
        summary.add_row(
            f"{m.provider} p50 latency (batch {m.batch_size}, {m.threads} thr)",
            f"{m.original.p50_ms:.3f} ms",
            f"{m.optimized.p50_ms:.3f} ms",
            f"{m.speedup:.2f}× faster",
        )
        if m.accuracy:
            a = m.accuracy
            style = "red" if a.drop > 1 else ""
            summary.add_row(
                f"{m.provider} {a.metric} ({a.samples} samples{', synthetic' if a.data == 'synthetic' else ''})",
                f"{a.original:.2f} %",
                f"{a.optimized:.2f} %",
                Text(f"{0.0 - a.drop:+.2f} pts", style=style),
            )
    parts: list = [summary]
    passes = Table(title="passes", title_justify="left")
    for column in ("#", "pass", "time", "size", "nodes"):
        passes.add_column(column, justify="right" if column in ("#", "time") else "left")
    for p in report.passes:
        passes.add_row(
            str(p.index),
            p.label,
            f"{p.wall_s:.2f} s",
            f"{human_bytes(p.size_before)} → {human_bytes(p.size_after)}",
            f"{p.nodes_before} → {p.nodes_after}",
        )
    parts.append(passes)
    for p in report.passes:
        for key, rows in p.details.items():
            if is_table(rows):
                detail = Table(title=f"{p.label}: {key.replace('_', ' ')}", title_justify="left")
                columns = table_columns(rows)
                for column in columns:
                    detail.add_column(column)
                for row in rows:
                    detail.add_row(*(Text(cell(row.get(c))) for c in columns))
                parts.append(detail)
    if report.gates:
        gates = Table(title="gates", title_justify="left")
        gates.add_column("gate")
        gates.add_column("result")
        for g in report.gates:
            gates.add_row(g.detail, Text("pass", style="green") if g.passed else Text("FAIL", style="bold red"))
        parts.append(gates)
    return Group(*parts)


def summary_view(summary: ModelSummary) -> Group:
    facts = Table(title=summary.path, title_justify="left", show_header=False)
    facts.add_column("")
    facts.add_column("")
    facts.add_row("size", human_bytes(summary.size_bytes))
    facts.add_row("IR version", str(summary.ir_version))
    facts.add_row("opsets", ", ".join(f"{d} {v}" for d, v in summary.opsets.items()))
    if summary.producer:
        facts.add_row("producer", summary.producer)
    facts.add_row("nodes", str(summary.nodes))
    facts.add_row("parameters", f"{summary.parameters:,}")
    facts.add_row("weight sparsity", f"{summary.weight_sparsity:.1%}")
    facts.add_row("quantized", "yes" if summary.quantized else "no")
    io = Table(title="inputs and outputs", title_justify="left")
    for column in ("", "name", "dtype", "shape"):
        io.add_column(column)
    for kind, values in (("input", summary.inputs), ("output", summary.outputs)):
        for v in values:
            shape = "[" + ", ".join("?" if d is None else str(d) for d in v.shape) + "]"
            io.add_row(kind, Text(v.name), v.dtype, Text(shape))
    ops = Table(title="op types", title_justify="left")
    ops.add_column("op type")
    ops.add_column("count", justify="right")
    for op, count in summary.op_types.items():
        ops.add_row(op, str(count))
    parts: list = [facts, io, ops]
    if summary.node_names is not None:
        nodes = Table(title="nodes", title_justify="left")
        nodes.add_column("name (op type)")
        for name in summary.node_names:
            nodes.add_row(name)
        parts.append(nodes)
    return Group(*parts)
