"""Heat-map overlays of anomaly maps on their images (no plotting dependency).

**Fixed scale.** An overlay colours a map value m by v = clip((m − lo)/(hi − lo), 0, 1) with
[lo, hi] = :data:`FIXED_SCALE` = [0, 1] unless the caller passes another fixed range: the
maps are anomaly probabilities, so 0 is dark blue, 0.5 green, 1 dark red on every image of
every run (no per-image min-max stretch, which would paint the hottest pixel of a clean
image as red as a real defect). The colour is blended in with opacity ``alpha``·v, as in
``report.html`` (:mod:`anoclip.results.report`), so the product stays visible where the map is low.
PNG overlays carry their scale as text chunks (:func:`png_info`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

FIXED_SCALE = (0.0, 1.0)
OVERLAY_ALPHA = 0.7
COLORMAP = "jet"

# "jet" colour map anchors: position -> RGB
_JET = np.array(
    [
        [0.00, 0.0, 0.0, 0.5],
        [0.11, 0.0, 0.0, 1.0],
        [0.36, 0.0, 1.0, 1.0],
        [0.50, 0.5, 1.0, 0.5],
        [0.64, 1.0, 1.0, 0.0],
        [0.89, 1.0, 0.0, 0.0],
        [1.00, 0.5, 0.0, 0.0],
    ]
)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] `[H, W]` -> uint8 RGB `[H, W, 3]` with the jet colour map."""
    v = np.clip(values, 0.0, 1.0)
    rgb = [np.interp(v, _JET[:, 0], _JET[:, c]) for c in (1, 2, 3)]
    return (np.stack(rgb, axis=-1) * 255 + 0.5).astype(np.uint8)


def scale_map(
    anomaly_map: np.ndarray, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Map -> v = clip((m − vmin)/(vmax − vmin), 0, 1) for display.

    A bound left as None falls back to the map's own minimum / maximum (a per-image
    stretch: only ask for it explicitly; overlays default to :data:`FIXED_SCALE`).
    """
    lo = float(anomaly_map.min()) if vmin is None else vmin
    hi = float(anomaly_map.max()) if vmax is None else vmax
    if hi <= lo:
        return np.zeros_like(anomaly_map, dtype=np.float32)
    return np.clip((anomaly_map - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def overlay(
    image: Image.Image,
    anomaly_map: np.ndarray,
    alpha: float = OVERLAY_ALPHA,
    vmin: float | None = FIXED_SCALE[0],
    vmax: float | None = FIXED_SCALE[1],
) -> Image.Image:
    """rgb·(1 − a) + jet(v)·a with a = alpha·v, v the map on the fixed scale [vmin, vmax].

    The image is resized to the map's size `[H, W]` if they differ.
    """
    rgb = image.convert("RGB")
    h, w = anomaly_map.shape
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.BILINEAR)
    v = scale_map(anomaly_map, vmin, vmax)
    heat = colorize(v).astype(np.float32)
    a = (alpha * v)[..., None]
    mixed = (1 - a) * np.asarray(rgb, dtype=np.float32) + a * heat
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))


def png_info(vmin: float = FIXED_SCALE[0], vmax: float = FIXED_SCALE[1],
             alpha: float = OVERLAY_ALPHA) -> PngInfo:  # fmt: skip
    """PNG text chunks that say how an overlay was coloured (read with ``Image.open(p).text``)."""
    info = PngInfo()
    info.add_text("anoclip:scale", f"{vmin:g} {vmax:g}")
    info.add_text("anoclip:colormap", COLORMAP)
    info.add_text("anoclip:opacity", f"{alpha:g}*v")
    info.add_text(
        "Comment",
        f"anomaly map on the fixed scale [{vmin:g}, {vmax:g}] ({COLORMAP}), opacity {alpha:g}*v",
    )
    return info
