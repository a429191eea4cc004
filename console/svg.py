"""Inline SVG line charts, rendered server-side from numbers: no JavaScript, nothing fetched.

Sans-I/O: `line_chart` takes series of (time, value) points and returns one `<svg>` element as
a string. Every text it writes (title, series names, axis labels) is escaped, so series named
after topics or groups (user input) cannot inject markup.

Layout (pixels, `width` x `height`): a left margin for the value axis labels, a bottom margin for
the time axis, a top margin for the title, and a legend under the plot, one row per series
(at most `MAX_LEGEND` named; the rest are summed up as "+ N more"). The value axis starts at 0
(rates and lags are never negative) and ends at a "nice" number (1, 2 or 5 times a power of ten)
at or above the largest value; the time axis spans the earliest to the latest point of all
series. A series with one point is drawn as a dot; an empty chart says "no samples yet".
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import msgspec

__all__ = ["MAX_LEGEND", "PALETTE", "Series", "format_si", "line_chart", "nice_ceiling"]

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
)
MAX_LEGEND = 8

_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 28, 28
_LEGEND_ROW = 16


class Series(msgspec.Struct, frozen=True):
    """One line: its name and its points, (seconds since the epoch, value), oldest first."""

    name: str
    points: Sequence[tuple[float, float]]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is >= `value` (1 for value <= 0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        candidate = step * 10.0**exponent
        if candidate >= value * (1 - 1e-12):
            return candidate
    return 10.0 ** (exponent + 1)


def format_si(value: float) -> str:
    """A short label: 0, 950, 1.5k, 12M, 3.2G (no unit)."""
    magnitude = abs(value)
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= factor:
            scaled = value / factor
            return f"{scaled:.1f}{suffix}".replace(".0" + suffix, suffix)
    if magnitude == 0 or magnitude >= 10:
        return f"{value:.0f}"
    return f"{value:.2g}"


def _clock(seconds: float) -> str:
    """HH:MM:SS of a time (UTC), for the time axis."""
    day = int(seconds) % 86_400
    return f"{day // 3600:02d}:{day % 3600 // 60:02d}:{day % 60:02d}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    unit: str = "",
    width: int = 640,
    height: int = 220,
) -> str:
    """One `<svg>` chart of `series`; `unit` is appended to the value axis's top label."""
    legend_rows = min(len(series), MAX_LEGEND) + (1 if len(series) > MAX_LEGEND else 0)
    total_height = height + legend_rows * _LEGEND_ROW
    plot_w = width - _LEFT - _RIGHT
    plot_h = height - _TOP - _BOTTOM
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{total_height}" viewBox="0 0 {width} {total_height}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<text x="{_LEFT}" y="18" class="chart-title">{html.escape(title)}</text>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" class="plot"/>',
    ]
    points = [p for s in series for p in s.points]
    if not points:
        out.append(
            f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
            'text-anchor="middle" class="chart-empty">no samples yet</text></svg>'
        )
        return "".join(out)
    t0 = min(t for t, _ in points)
    t1 = max(t for t, _ in points)
    span = t1 - t0 or 1.0
    top = nice_ceiling(max(v for _, v in points))

    def x(t: float) -> float:
        return _LEFT + (t - t0) / span * plot_w

    def y(v: float) -> float:
        return _TOP + plot_h - max(0.0, v) / top * plot_h

    for fraction in (0.0, 0.5, 1.0):
        gy = _TOP + plot_h - fraction * plot_h
        label = format_si(top * fraction) + (f" {unit}" if fraction == 1.0 and unit else "")
        out.append(
            f'<line x1="{_LEFT}" y1="{gy:.1f}" x2="{_LEFT + plot_w}" y2="{gy:.1f}" class="grid"/>'
            f'<text x="{_LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end" class="axis">'
            f"{html.escape(label)}</text>"
        )
    base = _TOP + plot_h + 16
    out.append(f'<text x="{_LEFT}" y="{base}" class="axis">{_clock(t0)}</text>')
    out.append(
        f'<text x="{_LEFT + plot_w}" y="{base}" text-anchor="end" class="axis">'
        f"{_clock(t1)} UTC</text>"
    )
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        if len(s.points) == 1:
            (t, v) = s.points[0]
            out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"/>')
        elif s.points:
            path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in s.points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.5"/>'
            )
        if i < MAX_LEGEND:
            ly = height + i * _LEGEND_ROW + 4
            last = s.points[-1][1] if s.points else 0.0
            out.append(
                f'<rect x="{_LEFT}" y="{ly}" width="10" height="10" fill="{color}"/>'
                f'<text x="{_LEFT + 16}" y="{ly + 9}" class="legend">{html.escape(s.name)} '
                f"(now {html.escape(format_si(last))})</text>"
            )
    if len(series) > MAX_LEGEND:
        ly = height + MAX_LEGEND * _LEGEND_ROW + 4
        out.append(
            f'<text x="{_LEFT + 16}" y="{ly + 9}" class="legend">'
            f"+ {len(series) - MAX_LEGEND} more</text>"
        )
    out.append("</svg>")
    return "".join(out)
