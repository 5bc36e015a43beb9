"""Charts drawn on the server as SVG (no JavaScript library): the usage page's GPU-hours per day."""

from __future__ import annotations

import math
from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# One colour per series, in order; enough for the server types a fleet has, then repeated.
PALETTE = ("#4f46e5", "#0f766e", "#d97706", "#be123c", "#2563eb", "#65a30d", "#7c3aed", "#475569")


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (the axis' top)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _label(value: float) -> str:
    """A figure for an axis or a tooltip: whole from 10 up, three significant digits below (0.0025, 2.5)."""
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.3g}"


def stacked_bars(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    unit: str,
    width: int = 900,
    height: int = 260,
) -> SafeString:
    """A stacked bar chart: one bar per label, one coloured segment per series (values per label, in order),
    a y axis in ``unit`` and a legend. Every text is escaped; each bar has a tooltip (``<title>``)."""
    left, right, top, bottom = 56, 12, 16, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top_value = _nice_ceiling(max(totals, default=0))
    slot = plot_w / max(len(labels), 1)
    bar = max(1.0, slot * 0.72)
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'xmlns="http://www.w3.org/2000/svg" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i in range(5):  # grid lines and y labels
        value = top_value * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e6ea"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#6a737d">'
            f"{escape(_label(value))}</text>"
        )
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.1f}" font-size="11" fill="#6a737d" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})" text-anchor="middle">{escape(unit)}</text>'
    )
    every = max(1, math.ceil(len(labels) / 16))  # at most ~16 x labels
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        tip = [f"{label}: {_label(totals[i])} {unit}"]
        for n, (name, values) in enumerate(series.items()):
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / top_value
            y -= h
            tip.append(f"{name}: {_label(value)}")
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[n % len(PALETTE)]}"><title>{escape(" · ".join(tip))}</title></rect>'
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11" '
                f'fill="#6a737d">{escape(label)}</text>'
            )
    x = left
    for n, name in enumerate(series):  # legend
        parts.append(
            f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{PALETTE[n % len(PALETTE)]}"/>'
            f'<text x="{x + 14}" y="{height - 5}" font-size="11" fill="#1b1f24">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every text in it was escaped above
