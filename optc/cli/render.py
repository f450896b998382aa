"""Rich renderings of optc's results for the terminal."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from optc.measure.bench import BenchReport
from optc.measure.compare import CompareReport
from optc.measure.profile import OpProfile, ProfileComparison
from optc.messages import printable
from optc.model_facts import ModelSummary
from optc.report.format import (
    cell,
    compressed_sizes,
    human_bytes,
    is_table,
    latency_rows,
    pass_title,
    speed_change,
    table_columns,
    top1_agreement_text,
    where_measured,
)
from optc.report.schema import Report

PROFILE_ROWS = 12


def report_view(report: Report) -> Group:
    summary = Table(
        title=f"optc: {printable(report.original.path)} → {printable(report.optimized.path)}", title_justify="left"
    )
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
    for before, after in compressed_sizes(report):
        summary.add_row("gzip size", human_bytes(before), human_bytes(after), f"{after / before:.3f}×")
    summary.add_row("parameters", f"{report.original.parameters:,}", f"{report.optimized.parameters:,}", "")
    summary.add_row("nodes", str(report.original.nodes), str(report.optimized.nodes), "")
    for m in report.measured():
        for line in latency_rows(m):
            summary.add_row(
                f"{m.provider} {line.label}",
                f"{milliseconds(line.original.p50_ms)} ms",
                f"{milliseconds(line.optimized.p50_ms)} ms",
                speed_change(line.speedup),
            )
        if m.decoder is not None:
            summary.add_row(f"{m.provider} next-token top-1", "100.00 %", f"{m.decoder.next_token_agreement:.2f} %", "")
            if m.decoder.perplexity_original is not None:
                summary.add_row(
                    f"{m.provider} perplexity",
                    f"{m.decoder.perplexity_original:.3f}",
                    f"{m.decoder.perplexity_optimized:.3f}",
                    "",
                )
        if m.accuracy:
            a = m.accuracy
            style = "red" if a.drop > 1 else ""
            summary.add_row(
                f"{m.provider} {a.metric}",
                f"{a.original:.2f} %",
                f"{a.optimized:.2f} %",
                Text(f"{0.0 - a.drop:+.2f} pts", style=style),
            )
    notes = [
        Text(f"{m.provider}: batch {m.batch_size}, {m.threads} thread(s); {_samples(m)}", style="dim")
        for m in report.measured()
    ]
    notes += [
        Text(printable(f"{m.provider}: not measured — {m.reason}"), style="yellow")
        for m in report.measurements
        if not m.measured
    ]
    where = Table(show_header=False, box=None, padding=(0, 1))
    for label, text in where_measured(report):
        where.add_row(label, Text(printable(text), style="yellow" if label == "warning" else ""))
    parts: list = [summary, *notes, where]
    passes = Table(title="passes", title_justify="left")
    for column in ("#", "pass", "time", "size", "nodes"):
        passes.add_column(column, justify="right" if column in ("#", "time") else "left")
    for p in report.passes:
        passes.add_row(
            str(p.index),
            Text(printable(pass_title(p))),
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
                    detail.add_row(*(Text(printable(cell(row.get(c)))) for c in columns))
                parts.append(detail)
    for m in report.measured():
        if m.profile is not None:
            parts.append(profile_view(f"{m.provider}: time per op type", m.profile))
    if report.gates:
        gates = Table(title="gates", title_justify="left")
        gates.add_column("gate")
        gates.add_column("result")
        for g in report.gates:
            gates.add_row(
                Text(printable(g.detail)), Text("pass", style="green") if g.passed else Text("FAIL", style="bold red")
            )
        parts.append(gates)
    return Group(*parts)


def _samples(m) -> str:
    a = m.accuracy
    return f"{a.samples} samples" + (" (synthetic)" if a.data == "synthetic" else "") if a else "no accuracy"


def summary_view(summary: ModelSummary) -> Group:
    facts = Table(title=printable(summary.path), title_justify="left", show_header=False)
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
            io.add_row(kind, Text(printable(v.name)), v.dtype, Text(printable(shape)))
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
            nodes.add_row(Text(printable(name)))
        parts.append(nodes)
    return Group(*parts)


def profile_view(title: str, profile: ProfileComparison) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("op type", "original ms/run", "share", "optimized ms/run", "share"):
        table.add_column(column, justify="left" if column == "op type" else "right")
    for o in profile.ops[:PROFILE_ROWS]:
        table.add_row(
            o.op_type, f"{o.before_ms:.4f}", f"{o.before_share:.1%}", f"{o.after_ms:.4f}", f"{o.after_share:.1%}"
        )
    return table


def milliseconds(value: float) -> str:
    """A latency in at most six characters, to the precision that matters at its size: a slow model's 12,346 ms
    printed as 12345.678 pushed the bench table past 80 columns and cut its ratio column."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 100 else f"{value:.3f}"


def noise_bound(bound: float) -> str:
    """At most five characters: a run on a busy machine met bounds of 10 and more, which pushed the table past 80
    columns."""
    return f"{bound:.3f}" if bound < 1 else f"{bound:.2f}" if bound < 10 else f"{bound:.0f}"


def bench_view(report: BenchReport) -> Group:
    """One table per case, narrow enough for an 80-column log; models are numbered, with their paths below."""
    labels = {index: f"#{index}" for index in range(len(report.models))}
    parts: list = []
    for case in report.cases:
        title = f"{case.provider}, batch {case.batch_size}, {case.threads} thread(s)"
        if not case.measured:
            parts.append(Text(printable(f"{title}: not measured — {case.reason}"), style="yellow"))
            continue
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
        for column in ("model", "p50 ms", "p90 ms", "p99 ms", "cv", "samples/s", "peak mem", "p50 vs #0"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for r in case.results:
            s = r.latency
            ratio = ""
            if r.ratio_to_first:
                q = r.ratio_to_first
                ratio = f"{q.value:.3f}±{noise_bound(q.noise_bound)}" + ("" if q.significant else " ~")
            table.add_row(
                labels[r.model],
                milliseconds(s.p50_ms),
                milliseconds(s.p90_ms),
                milliseconds(s.p99_ms),
                Text(f"{s.cv:.0%}" if s.cv is not None else "", style="yellow" if r.noisy else ""),
                f"{r.throughput_per_s:,.0f}",
                human_bytes(r.peak_memory_bytes) if r.peak_memory_bytes is not None else "unknown",
                ratio,
            )
        parts.append(table)
        parts += [
            op_profile_view(f"{title}: {labels[r.model]} time per op type", r.profile)
            for r in case.results
            if r.profile is not None
        ]
    parts += [Text(printable(f"{labels[i]}  {model.path}")) for i, model in enumerate(report.models)]
    settings = report.settings
    parts.append(
        Text(
            f"{settings.warmup} warm-up runs, then at least {settings.runs} interleaved rounds and "
            f"{settings.min_time_s:g} s; ~ marks a ratio within its noise bound; data: {printable(report.data)}",
            style="dim",
        )
    )
    return Group(*parts)


def op_profile_view(title: str, profile: OpProfile) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("op type", "ms/run", "share", "calls/run"):
        table.add_column(column, justify="left" if column == "op type" else "right")
    for o in profile.ops[:PROFILE_ROWS]:
        table.add_row(o.op_type, f"{o.ms_per_run:.4f}", f"{o.share:.1%}", f"{o.calls_per_run:g}")
    return table


def compare_view(report: CompareReport, top: int) -> Group:
    a = report.accuracy
    heading = f"{report.optimized} vs {report.original} on {a.samples} samples of {report.data} ({report.provider})"
    outputs = Table(title=heading, title_justify="left")
    for column in ("output", "cosine", "SQNR dB", "max abs err", "mean abs err", "top-1 agr.", "top-5 agr."):
        outputs.add_column(column, justify="left" if column == "output" else "right")
    for o in a.outputs:
        outputs.add_row(
            Text(o.name),
            f"{o.cosine:.6f}",
            _db(o.sqnr_db),
            f"{o.max_abs_error:.4g}",
            f"{o.mean_abs_error:.4g}",
            top1_agreement_text(o),
            f"{o.top5_agreement:.2f} %" if o.top5_agreement is not None else "—",
        )
    parts: list = [outputs]
    if a.metric == "top1":
        parts.append(Text(f"top-1 accuracy: {a.original:.2f} % → {a.optimized:.2f} % ({-a.drop:+.2f} points)"))
    if report.per_tensor is not None:
        tensors = report.per_tensor.tensors
        table = Table(
            title=f"intermediate tensors, worst first ({min(top, len(tensors))} of {len(tensors)})",
            title_justify="left",
        )
        for column in ("tensor", "#node", "op (orig → opt)", "SQNR dB", "cosine", "max abs err", "mean abs err"):
            table.add_column(column, justify="left" if column in ("tensor", "op (orig → opt)") else "right")
        for t in tensors[:top]:
            ops = t.original_op if t.original_op == t.optimized_op else f"{t.original_op} → {t.optimized_op}"
            table.add_row(
                Text(t.name),
                str(t.position),
                ops,
                _db(t.sqnr_db),
                f"{t.cosine:.6f}",
                f"{t.max_abs_error:.4g}",
                f"{t.mean_abs_error:.4g}",
            )
        parts.append(table)
    return Group(*parts)


def _db(value: float | None) -> str:
    return "identical" if value is None else f"{value:.1f}"


def sensitivity_view(rows: list[dict]) -> Table:
    view = Table(
        title="int8 sensitivity (SQNR each node loses between its inputs and its output)", title_justify="left"
    )
    for column in ("node", "op_type", "SQNR lost dB", "output SQNR dB"):
        view.add_column(column, justify="left" if column in ("node", "op_type") else "right")
    for row in rows:
        view.add_row(Text(printable(row["node"])), row["op_type"], f"{row['drop_db']:.2f}", f"{row['sqnr_db']:.2f}")
    return view
