"""Small inline SVG charts for the operators' dashboard: no scripts, no external assets.

Every function returns SVG markup (``markupsafe.Markup``) whose text is escaped; sizes are in
CSS pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

COLOURS = {
    "sent": "#2e7d32", "queued": "#90a4ae", "deferred": "#f9a825", "failed": "#c62828",
    "unknown": "#6a1b9a", "skipped": "#bdbdbd", "bounced": "#ef6c00", "complained": "#ad1457",
    "unsubscribed": "#1565c0", "signups": "#1a4d8f", "confirmed": "#2e7d32",
}  # fmt: skip


def bars(
    points: Sequence[tuple[str, float]],
    *,
    width: int = 640,
    height: int = 160,
    colour: str = "#1a4d8f",
    title: str = "",
    unit: str = "",
) -> Markup:
    """A vertical bar chart of (label, value); the first and last labels are written under it."""
    if not points:
        return Markup('<p class="muted">no data yet</p>')
    top = max(value for _, value in points) or 1.0
    pad, base = 4, height - 18
    step = (width - 2 * pad) / len(points)
    parts = [_open(width, height, title)]
    for i, (label, value) in enumerate(points):
        h = (base - 14) * value / top
        x = pad + i * step
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{max(step - 1, 1):.1f}" height="{h:.1f}" '
            f'fill="{colour}"><title>{escape(label)}: {value:g}{escape(unit)}</title></rect>'
        )
    parts.append(f'<text x="{pad}" y="10" class="axis">max {top:g}{escape(unit)}</text>')
    parts.append(f'<text x="{pad}" y="{height - 4}" class="axis">{escape(points[0][0])}</text>')
    parts.append(
        f'<text x="{width - pad}" y="{height - 4}" class="axis" text-anchor="end">'
        f"{escape(points[-1][0])}</text>"
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bar(
    segments: Sequence[tuple[str, int]], *, width: int = 240, height: int = 14
) -> Markup:
    """One horizontal bar split into coloured segments (name, count), proportional to the total."""
    total = sum(n for _, n in segments)
    parts = [_open(width, height, "")]
    parts.append(f'<rect width="{width}" height="{height}" fill="#eceff1"/>')
    x = 0.0
    for name, n in segments:
        if not n or not total:
            continue
        w = width * n / total
        parts.append(
            f'<rect x="{x:.2f}" width="{w:.2f}" height="{height}" '
            f'fill="{COLOURS.get(name, "#78909c")}">'
            f"<title>{escape(name)}: {n}</title></rect>"
        )
        x += w
    parts.append("</svg>")
    return Markup("".join(parts))


def gauge(
    value: float | None, thresholds: Sequence[float], *, maximum: float, width: int = 320
) -> Markup:
    """A horizontal scale from 0 to ``maximum`` with threshold ticks and a marker at ``value``."""
    height = 34
    parts = [_open(width, height, "")]
    parts.append(f'<rect y="8" width="{width}" height="10" fill="#e8f5e9"/>')
    for i, limit in enumerate(thresholds):
        x = width * min(limit / maximum, 1.0)
        fill = "#fff8e1" if i == 0 else "#ffebee"
        parts.append(f'<rect x="{x:.1f}" y="8" width="{width - x:.1f}" height="10" fill="{fill}"/>')
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="22" stroke="#555"/>')
        parts.append(
            f'<text x="{x:.1f}" y="32" class="axis" text-anchor="middle">{limit * 100:g} %</text>'
        )
    if value is not None:
        x = width * min(value / maximum, 1.0)
        parts.append(
            f'<circle cx="{x:.1f}" cy="13" r="5" fill="#222">'
            f"<title>{value * 100:.3f} %</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _open(width: int, height: int, title: str) -> str:
    label = f' aria-label="{escape(title)}"' if title else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img"{label}>'
    )


__all__ = ["COLOURS", "bars", "gauge", "stacked_bar"]
