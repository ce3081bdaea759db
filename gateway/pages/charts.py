"""Inline SVG for the dry-run timeline: one bar per time bucket, sends on the y axis. Pure
functions; the markup carries a text alternative for screen readers."""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from markupsafe import Markup

WIDTH, HEIGHT, PAD_L, PAD_B, PAD_T = 640, 200, 48, 28, 10


def timeline_svg(buckets: list[dict[str, Any]], title: str) -> Markup:
    if not buckets:
        return Markup('<p class="muted">Nothing would be sent.</p>')
    peak = max(int(b["sends"]) for b in buckets) or 1
    plot_w, plot_h = WIDTH - PAD_L - 8, HEIGHT - PAD_B - PAD_T
    step = plot_w / len(buckets)
    bar_w = min(max(step * 0.8, 1.0), 48.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title" preserveAspectRatio="xMidYMid meet">',
        f'<title id="chart-title">{escape(title)}</title>',
        f'<line x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{WIDTH - 8}" y2="{PAD_T + plot_h}" '
        'class="axis"/>',
        f'<text x="{PAD_L - 6}" y="{PAD_T + 10}" text-anchor="end" class="tick">{peak:,}</text>',
        f'<text x="{PAD_L - 6}" y="{PAD_T + plot_h}" text-anchor="end" class="tick">0</text>',
    ]
    for i, b in enumerate(buckets):
        h = plot_h * int(b["sends"]) / peak
        x = PAD_L + i * step + (step - bar_w) / 2
        label = f"{_hm(b['start'])}–{_hm(b['end'])}: {int(b['sends']):,} sends"
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{PAD_T + plot_h - h:.1f}" '
                     f'width="{bar_w:.1f}" height="{h:.1f}"><title>{escape(label)}</title></rect>')
    for i in sorted({0, len(buckets) // 2, len(buckets) - 1}):
        x = PAD_L + i * step + step / 2
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="tick">'
                     f'{escape(_hm(buckets[i]["start"]))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _hm(value: datetime | str) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%d %b %H:%M")
