"""Small inline SVG charts for report.html: horizontal bars, grouped bars, latency ranges, and lines.

Hand-written rather than a plotting library: four chart kinds of a few dozen lines each, no dependency, and the
output is plain markup that needs no script or font to render. Every chart carries ``data-chart`` so tests (and
readers of the HTML) can find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

WIDTH = 760
LABEL_W = 220
ROW_H = 22
PAD = 12
COLORS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756")
HIGHLIGHT = "#e45756"
AXIS_HEADROOM = 1.6  # latency axes end this far past the largest p90


@dataclass(frozen=True)
class LatencyRow:
    label: str
    min: float
    p50: float
    p90: float
    p99: float
    max: float
    mean: float


def _svg(kind: str, title: str, height: float, body: list[str]) -> str:
    return (
        f'<svg class="chart" data-chart="{escape(kind)}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" height="{height:.0f}">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, label: str, anchor: str = "start", size: int = 12, fill: str = "#333") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}">{escape(label)}</text>'
    )


def _scale(high: float, span: float):
    """Map [0, high] onto [LABEL_W, LABEL_W + span]; zero-width ranges still get a usable axis."""
    high = high if high > 0 else 1.0
    return lambda value: LABEL_W + span * max(value, 0.0) / high


def bar_chart(kind: str, title: str, items: list[tuple[str, float]], unit: str = "", highlight=frozenset()) -> str:
    """One horizontal bar per item; labels in ``highlight`` are drawn in the highlight colour."""
    span = WIDTH - LABEL_W - 90
    x = _scale(max((v for _, v in items), default=0.0), span)
    body, y = [], PAD
    for label, value in items:
        color = HIGHLIGHT if label in highlight else COLORS[0]
        body.append(_text(LABEL_W - 6, y + 15, label[:34], "end"))
        body.append(
            f'<rect x="{LABEL_W}" y="{y + 3}" width="{x(value) - LABEL_W:.1f}" height="{ROW_H - 6}" fill="{color}"/>'
        )
        body.append(_text(x(value) + 4, y + 15, f"{value:.4g}{unit}"))
        y += ROW_H
    return _svg(kind, title, y + PAD, body)


def grouped_bar_chart(kind: str, title: str, categories: list[str], series: dict[str, list[float]], unit="") -> str:
    """For each category, one bar per series (e.g. an op type's share before and after)."""
    span = WIDTH - LABEL_W - 90
    x = _scale(max((v for values in series.values() for v in values), default=0.0), span)
    bar_h = (ROW_H * 1.6) / max(len(series), 1)
    body, y = [_legend(list(series), PAD)], PAD + 22
    for index, category in enumerate(categories):
        body.append(_text(LABEL_W - 6, y + bar_h * len(series) / 2 + 4, category[:34], "end"))
        for offset, (name, values) in enumerate(series.items()):
            value = values[index]
            top = y + offset * bar_h
            color = COLORS[offset % len(COLORS)]
            body.append(
                f'<rect x="{LABEL_W}" y="{top:.1f}" width="{x(value) - LABEL_W:.1f}" height="{bar_h - 2:.1f}" '
                f'fill="{color}"><title>{escape(name)}: {value:.4g}{escape(unit)}</title></rect>'
            )
            body.append(_text(x(value) + 4, top + bar_h - 4, f"{value:.3g}{unit}", size=10))
        y += bar_h * len(series) + 8
    return _svg(kind, title, y + PAD, body)


def latency_chart(kind: str, title: str, rows: list[LatencyRow]) -> str:
    """Per row: a line from min to max, a bar from p50 to p90, a tick at p99, a dot at the mean."""
    span = WIDTH - LABEL_W - 40
    # The axis is sized to the p50–p90 bars, the figures worth comparing: stalled runs (p99, max, and the mean they
    # drag) may lie far beyond and would squeeze the bars to slivers. What falls past the edge is drawn at the edge
    # with an arrow; the printed figures give its value.
    edge = max((r.p90 for r in rows), default=0.0) * AXIS_HEADROOM
    clip = LABEL_W + span
    scale = _scale(edge, span)

    def x(value: float) -> float:
        return min(scale(value), clip)

    body, y = [], PAD
    for index, r in enumerate(rows):
        color = COLORS[index % len(COLORS)]
        mid = y + ROW_H
        body += [
            _text(LABEL_W - 6, mid + 4, r.label[:34], "end"),
            f'<line x1="{x(r.min):.1f}" y1="{mid}" x2="{x(r.max):.1f}" y2="{mid}" stroke="{color}"/>',
            f'<rect x="{x(r.p50):.1f}" y="{mid - 8}" width="{max(x(r.p90) - x(r.p50), 1.5):.1f}" height="16" '
            f'fill="{color}" fill-opacity="0.6" stroke="{color}"/>',
            f'<line x1="{x(r.p50):.1f}" y1="{mid - 10}" x2="{x(r.p50):.1f}" y2="{mid + 10}" stroke="#000" '
            'stroke-width="2"/>',
            f'<line x1="{x(r.p99):.1f}" y1="{mid - 6}" x2="{x(r.p99):.1f}" y2="{mid + 6}" stroke="{color}"/>',
            f'<circle cx="{x(r.mean):.1f}" cy="{mid}" r="3" fill="#fff" stroke="#000"/>',
            *([_text(clip + 2, mid + 4, "→", size=12, fill=color)] if scale(r.max) > clip else []),
            _text(
                WIDTH - 4,
                mid + ROW_H - 2,
                f"p50 {r.p50:.3f}  p90 {r.p90:.3f}  p99 {r.p99:.3f}  max {r.max:.3f} ms",
                "end",
                10,
                "#555",
            ),
        ]
        y += 2 * ROW_H + 4
    body.append(
        _text(
            LABEL_W,
            y + 10,
            "line: min–max · bar: p50–p90 · black tick: p50 · tick: p99 · circle: mean · →: beyond the axis",
            size=10,
        )
    )
    return _svg(kind, title, y + 2 * PAD, body)


def line_chart(kind: str, title: str, x_label: str, xs: list[float], series: dict[str, list[float]]) -> str:
    """One small panel per series (their units differ), sharing the x axis."""
    panel_h, left, right = 120, 70, WIDTH - 20
    low, high = min(xs, default=0.0), max(xs, default=1.0)
    width = (high - low) or 1.0

    def px(v: float) -> float:
        return left + (right - left) * (v - low) / width

    body, top = [], PAD
    for index, (name, ys) in enumerate(series.items()):
        y_low, y_high = min(ys), max(ys)
        y_span = (y_high - y_low) or 1.0

        def py(v: float, top: float = top, y_low: float = y_low, y_span: float = y_span) -> float:
            return top + 20 + (panel_h - 40) * (1 - (v - y_low) / y_span)

        color = COLORS[index % len(COLORS)]
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs, ys, strict=True))
        body += [
            _text(left, top + 12, name, size=12, fill=color),
            f'<line x1="{left}" y1="{top + panel_h - 20}" x2="{right}" y2="{top + panel_h - 20}" stroke="#ccc"/>',
            _text(left - 4, py(y_high) + 4, f"{y_high:.4g}", "end", 10),
            _text(left - 4, py(y_low) + 4, f"{y_low:.4g}", "end", 10),
            f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>',
        ]
        body += [
            f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{color}"/>' for a, b in zip(xs, ys, strict=True)
        ]
        top += panel_h
    body += [
        _text(left, top + 4, f"{low:.3g}", "middle", 10),
        _text(right, top + 4, f"{high:.3g}", "middle", 10),
        _text((left + right) / 2, top + 4, x_label, "middle", 11),
    ]
    return _svg(kind, title, top + 2 * PAD, body)


def _legend(names: list[str], y: float) -> str:
    parts, x = [], LABEL_W
    for index, name in enumerate(names):
        parts.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{COLORS[index % len(COLORS)]}"/>')
        parts.append(_text(x + 16, y + 11, name))
        x += 24 + 8 * len(name)
    return "".join(parts)
