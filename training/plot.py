"""Loss curves drawn with PIL (matplotlib is not a dependency of this project)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
Series = tuple[Sequence[float], Sequence[float]]  # (x, y)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average, so that a noisy per-step loss stays readable."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def line_plot(
    series: dict[str, Series],
    path: Path,
    title: str,
    *,
    log_y: bool = True,
    size: tuple[int, int] = (800, 480),
) -> None:
    """Write a PNG with one line per series, a legend, and min/max axis labels."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 12), title, fill="black")

    def fy(v: float) -> float:
        return math.log10(v) if log_y else v

    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True)]
    points = [(x, y) for x, y in points if math.isfinite(y) and (y > 0 or not log_y)]
    if not points:
        img.save(path)
        return
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(fy(p[1]) for p in points), max(fy(p[1]) for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = top + (1 - (fy(y) - y0) / (y1 - y0)) * (height - top - bottom)
        return px, py

    draw.rectangle((left, top, width - right, height - bottom), outline="black")
    # Horizontal grid at decades (log) or at quarters (linear), labelled on the left.
    if log_y:
        decades = range(math.floor(y0), math.ceil(y1) + 1)
        ticks = [m * 10.0**k for k in decades for m in (1.0, 2.0, 5.0)]
    else:
        ticks = [y0 + (y1 - y0) * q for q in (0.0, 0.25, 0.5, 0.75, 1.0)]
    for tick in ticks:
        if y0 - 1e-9 <= fy(tick) <= y1 + 1e-9:
            _, py = to_px(x0, tick)
            draw.line((left, py, width - right, py), fill=(220, 220, 220))
            draw.text((4, py - 6), f"{tick:.3g}", fill="black")
    # The data range, so that a narrow range between ticks is still readable.
    for value in (y0, y1):
        _, py = to_px(x0, 10**value if log_y else value)
        draw.text((4, py - 6), f"{10**value if log_y else value:.4g}", fill=(90, 90, 90))
    draw.text((left, height - bottom + 6), f"{x0:g}", fill="black")
    draw.text((width - right - 40, height - bottom + 6), f"{x1:g}", fill="black")

    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = [
            to_px(x, y)
            for x, y in zip(xs, ys, strict=True)
            if math.isfinite(y) and (y > 0 or not log_y)
        ]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        elif pts:
            draw.ellipse((pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2), fill=colour)
        ly = top + 8 + 14 * i
        draw.line((width - right - 150, ly + 6, width - right - 130, ly + 6), fill=colour, width=2)
        draw.text((width - right - 125, ly), name, fill="black")
    img.save(path)
