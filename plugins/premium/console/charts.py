"""Server-side SVG bar charts for the console: hand-drawn, no library, no script, no network.

A chart is inline SVG in the page (the console's pages load nothing else: inside the Airflow UI's
iframe, and in a bank network without internet, there is nothing to fetch). Each bar carries its
figure as ``data-label``/``data-value`` and as a ``<title>`` (the browser's tooltip), and every
chart sits next to a table of the same rows, so nothing is read off a picture alone. Threshold
lines (the §6.1 alert levels) are dashed, labelled with their value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from markupsafe import Markup, escape

WIDTH = 860
HEIGHT = 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 84, 130, 16, 84  # x labels are rotated; threshold labels right
MAX_X_LABELS = 16


@dataclass(frozen=True)
class Threshold:
    """A horizontal line: an alert level (``value``), named by ``label``."""

    value: float
    label: str


def _number(value: float | Decimal | None) -> float | None:
    return None if value is None else float(value)


def _fmt(value: float) -> str:
    return f"{value:,.3f}".rstrip("0").rstrip(".") if value % 1 else f"{int(value):,}"


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 × 10^n) giving about ``ticks`` intervals over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def scale(values: Sequence[float], thresholds: Sequence[float], *, floor: float | None, ceiling: float | None):
    """(low, high, step) of the y axis: round numbers holding every value and threshold. ``floor``
    None: just below the smallest value or threshold (never below 0)."""
    seen = [v for v in (*values, *thresholds) if v is not None]
    top = max(seen, default=1.0)
    bottom = min(seen, default=0.0)
    high = ceiling if ceiling is not None else (top * 1.1 if top > 0 else 1.0)
    low = floor if floor is not None else max(0.0, bottom - (high - bottom) * 0.25)
    step = nice_step(high - low)
    if floor is None:
        low = math.floor(low / step) * step
    if ceiling is None:
        high = math.ceil(high / step) * step
    if high <= low:
        high = low + step
    return low, high, step


def bar_chart(
    points: Sequence[tuple[str, float | Decimal | None]],
    *,
    title: str,
    unit: str = "",
    thresholds: Sequence[Threshold] = (),
    floor: float | None = 0.0,
    ceiling: float | None = None,
    chart_id: str = "",
) -> Markup:
    """An SVG bar chart of ``points`` (label, value; None: no bar). ``floor``/``ceiling`` bound the
    y axis (a percentage near its threshold reads better from, say, 95 than from 0)."""
    values = [_number(v) for _, v in points]
    low, high, step = scale(
        [v for v in values if v is not None], [t.value for t in thresholds], floor=floor, ceiling=ceiling
    )
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def y(value: float) -> float:
        clamped = min(max(value, low), high)
        return MARGIN_TOP + plot_h * (1 - (clamped - low) / (high - low))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" data-chart="{escape(chart_id)}" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    tick = low
    while tick <= high + step / 1000:
        ty = y(tick)
        out.append(
            f'<line class="grid" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}"/>'
            f'<text class="tick" x="{MARGIN_LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">{escape(_fmt(tick))}</text>'
        )
        tick += step
    if unit:
        out.append(f'<text class="unit" x="4" y="{MARGIN_TOP - 4}">{escape(unit)}</text>')
    n = max(len(points), 1)
    slot = plot_w / n
    bar_w = max(min(slot * 0.7, 48), 1)
    every = max(1, math.ceil(len(points) / MAX_X_LABELS))
    base = y(low)
    for i, ((label, _), value) in enumerate(zip(points, values, strict=True)):
        x = MARGIN_LEFT + slot * i + (slot - bar_w) / 2
        cx = MARGIN_LEFT + slot * i + slot / 2
        if value is not None:
            top = y(value)
            shown = f"{_fmt(value)} {unit}".strip()
            out.append(
                f'<rect class="bar" x="{x:.1f}" y="{min(top, base):.1f}" width="{bar_w:.1f}" '
                f'height="{max(abs(base - top), 0.5):.1f}" data-label="{escape(label)}" data-value="{value!r}">'
                f"<title>{escape(label)}: {escape(shown)}</title></rect>"
            )
        if i % every == 0:
            ly = HEIGHT - MARGIN_BOTTOM + 14
            out.append(
                f'<text class="xlabel" x="{cx:.1f}" y="{ly}" text-anchor="end" '
                f'transform="rotate(-35 {cx:.1f} {ly})">{escape(label)}</text>'
            )
    label_y = -math.inf
    for t in sorted(thresholds, key=lambda t: -t.value):  # top to bottom: labels never overlap
        ty = y(t.value)
        label_y = max(ty + 4, label_y + 13)
        out.append(
            f'<line class="threshold" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'data-threshold="{t.value!r}"><title>{escape(t.label)}</title></line>'
            f'<text class="threshold-label" x="{WIDTH - MARGIN_RIGHT + 6}" y="{label_y:.1f}">{escape(t.label)}</text>'
        )
    if not points:
        out.append(f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>')
    out.append(
        f'<line class="axis" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT}" y1="{MARGIN_TOP}" y2="{HEIGHT - MARGIN_BOTTOM}"/>'
    )
    out.append("</svg>")
    return Markup("".join(out))
