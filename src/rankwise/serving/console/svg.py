"""Small SVG charts drawn on the server, so the console's quality pages need no JavaScript and no CDN.

A chart is a handful of elements — axes, a line, one circle per point (``class="point"``, alarms
``class="point alarm"``) with a ``<title>`` tooltip, and an optional reference band — which is all a
history of evaluation runs needs; a plotting library in the browser would be more code to vendor than
this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PAD_X, PAD_Y = 72, 28


@dataclass(frozen=True, slots=True)
class Point:
    label: str  # the x-axis label (a time), also in the tooltip
    value: float
    note: str = ""  # tooltip text after the value
    alarm: bool = False


def line_chart(points: Sequence[Point], *, title: str, band: tuple[float, float] | None = None,
               unit: str = "", size: tuple[int, int] = (720, 240)) -> str:
    """An SVG line chart of ``points`` in order, with ``band`` (low, high) shaded as the reference range;
    ``size``: the drawing's width and height (it scales to its box, text with it)."""
    WIDTH, HEIGHT = size
    points = [p for p in points if math.isfinite(p.value)]  # a run without the metric is no point on the line
    if not points:
        return f"<p class=dim>{escape(title)}: no data yet</p>"
    values = [p.value for p in points] + (list(band) if band else [])
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    margin = (high - low) * 0.08
    low, high = low - margin, high + margin
    inner_w, inner_h = WIDTH - 2 * PAD_X, HEIGHT - 2 * PAD_Y

    def x(i: int) -> float:
        return PAD_X + (inner_w * i / (len(points) - 1) if len(points) > 1 else inner_w / 2)

    def y(v: float) -> float:
        return PAD_Y + inner_h * (1 - (v - low) / (high - low))

    parts = [(f'<svg class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
              f'aria-label="{escape(title)}"><title>{escape(title)}</title>')]
    if band is not None:
        top, bottom = y(band[1]), y(band[0])
        parts.append(f'<rect class="band" x="{PAD_X}" y="{top:.1f}" width="{inner_w}" height="{bottom - top:.1f}"/>')
    for value in (low + margin, high - margin):
        parts.append(f'<line class="grid" x1="{PAD_X}" x2="{WIDTH - PAD_X}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>'
                     f'<text class="tick" x="{PAD_X - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                     f'{value:.4g}{escape(unit)}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(i):.1f},{y(p.value):.1f}" for i, p in enumerate(points))
    parts.append(f'<path class="line" d="{path}"/>')
    for i, p in enumerate(points):
        tip = f"{p.label}: {p.value:.4f}{unit}" + (f" — {p.note}" if p.note else "")
        parts.append(f'<circle class="point{" alarm" if p.alarm else ""}" cx="{x(i):.1f}" cy="{y(p.value):.1f}" '
                     f'r="{6 if p.alarm else 4}" data-value="{p.value:.6f}"><title>{escape(tip)}</title></circle>')
    for i in sorted({0, len(points) - 1}):
        parts.append(f'<text class="tick" x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                     f'{escape(points[i].label[:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)
