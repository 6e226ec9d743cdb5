"""What the browser shows: an item as text or a PNG thumbnail, and the live panel's small SVG plots.

Texts and plots are rendered on the server and returned as strings. An image of an image pool is shown
from its thumbnail file (:class:`bayesal.data.Thumbnails`, served by the app's ``/thumbs/`` route); other
images as ``data:`` URIs.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bayesal.data import THUMB_SIDE, is_image, png_bytes, thumbnail_png

__all__ = ["png_bytes", "image_data_uri", "item_view", "line_plot_svg", "is_image", "THUMB_SIDE"]

MAX_TEXT_CHARS = 4000


def image_data_uri(img: np.ndarray, side: int = THUMB_SIDE) -> str:
    """A ``data:image/png`` URI of ``img`` upscaled by an integer factor to about ``side`` pixels."""
    return "data:image/png;base64," + base64.b64encode(thumbnail_png(img, side)).decode("ascii")


def item_view(item: Any, index: int) -> dict[str, Any]:
    """``{"kind": "text"|"image"|"id", ...}`` for one pool item (``None``: the pool index only)."""
    if isinstance(item, bytes):
        item = item.decode(errors="replace")
    if isinstance(item, str):
        text = item if len(item) <= MAX_TEXT_CHARS else item[:MAX_TEXT_CHARS] + " …"
        return {"kind": "text", "text": text}
    if is_image(item):
        return {"kind": "image", "src": image_data_uri(item), "shape": list(item.shape)}
    if item is None:
        return {"kind": "id", "text": f"instance #{index}"}
    if isinstance(item, np.ndarray):
        return {"kind": "id", "text": f"instance #{index} (array of shape {tuple(item.shape)})"}
    text = str(item)
    return {"kind": "text", "text": text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + " …"}


def line_plot_svg(
    series: Sequence[tuple[str, Sequence[float], Sequence[float], str]],
    *,
    title: str,
    width: int = 300,
    height: int = 120,
    y_range: tuple[float, float] | None = None,
) -> str:
    """A small inline SVG line plot. ``series``: ``(name, x, y, css colour)``; NaN/inf points are left out.

    The axis ranges cover every finite point (``y_range`` fixes the y axis, e.g. ``(0, 1)``). Names are
    escaped; the result is safe to insert into the page.
    """
    pad_l, pad_r, pad_t, pad_b = 42, 8, 16, 16
    pts = [
        (name, [(float(a), float(b)) for a, b in zip(xs, ys) if math.isfinite(a) and math.isfinite(b)], colour)
        for name, xs, ys, colour in series
    ]
    all_x = [p[0] for _, ps, _ in pts for p in ps]
    all_y = [p[1] for _, ps, _ in pts for p in ps]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{pad_l}" y="11" class="plot-title">{html.escape(title)}</text>']
    if not all_x:
        out.append(f'<text x="{pad_l}" y="{height // 2}" class="plot-empty">no data yet</text></svg>')
        return "".join(out)
    x0, x1 = min(all_x), max(all_x)
    if x1 <= x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = y_range if y_range is not None else (min(all_y), max(all_y))
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    sx = (width - pad_l - pad_r) / (x1 - x0)
    sy = (height - pad_t - pad_b) / (y1 - y0)

    def px(x: float) -> float:
        return pad_l + (x - x0) * sx

    def py(y: float) -> float:
        return height - pad_b - (min(max(y, y0), y1) - y0) * sy

    out.append(f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" class="axis"/>')
    out.append(f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" class="axis"/>')
    out.append(f'<text x="{pad_l - 3}" y="{pad_t + 4}" class="tick" text-anchor="end">{_fmt(y1)}</text>')
    out.append(f'<text x="{pad_l - 3}" y="{height - pad_b}" class="tick" text-anchor="end">{_fmt(y0)}</text>')
    out.append(f'<text x="{pad_l}" y="{height - 3}" class="tick">{_fmt(x0)}</text>')
    out.append(f'<text x="{width - pad_r}" y="{height - 3}" class="tick" text-anchor="end">{_fmt(x1)} labels</text>')
    legend_x = width - pad_r
    for name, ps, colour in reversed(pts):
        if not ps:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in ps)
        out.append(f'<polyline points="{path}" fill="none" stroke="{html.escape(colour)}" stroke-width="1.5"/>')
        if len(ps) == 1:
            out.append(f'<circle cx="{px(ps[0][0]):.1f}" cy="{py(ps[0][1]):.1f}" r="2" fill="{html.escape(colour)}"/>')
        out.append(f'<text x="{legend_x}" y="11" class="legend" text-anchor="end" fill="{html.escape(colour)}">'
                   f"{html.escape(name)}</text>")
        legend_x -= 7 * len(name) + 10
    out.append("</svg>")
    return "".join(out)


def _fmt(v: float) -> str:
    if abs(v) >= 100 or v == int(v):
        return f"{v:.0f}"
    return f"{v:.2g}"
