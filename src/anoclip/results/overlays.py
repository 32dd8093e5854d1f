"""Heat-map overlays of anomaly maps on their images (no plotting dependency).

**A scale anchored to the calibration.** An overlay colours a map value m by
v = clip((m − lo)/(hi − lo), 0, 1), the same [lo, hi] for every image of a run, from its
threshold (:func:`calibrated_scale`):

    Δ = t_px_r − t_px_typ          t_px_typ: a normal image's typical map maximum
    lo = t_px_typ − Δ,  hi = t_px_typ + 3Δ

so the typical normal maximum sits at v = 1/4 (faint), the pixel review bound t_px_r at
v = 1/2 (green, mid-bar) and, for the unlabeled rule (t_px_d = t_px_typ + 2.3Δ), the defect
bound at v ≈ 0.82. Normal variation stays nearly transparent, and a defect past the bounds
is yellow to red, on any backbone (visual-only maps span 0.06–0.29, CLIP maps
0–1). No per-image min-max stretch, which would paint the hottest pixel of a clean image as
red as a real defect. Without a calibrated pixel bound the scale is :data:`FIXED_SCALE`
= [0, 1] (the maps are anomaly probabilities). The colour is blended in with opacity
``alpha``·min(1, 2v) (:func:`opacity`), as in ``report.html`` (:mod:`anoclip.results.report`),
so the product stays visible where the map is low. PNG overlays carry their scale as text
chunks (:func:`png_info`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

FIXED_SCALE = (0.0, 1.0)
OVERLAY_ALPHA = 0.7
OPACITY_RAMP = 2.0  # opacity a = alpha·min(1, 2v): fully shown from the review bound (v = ½) up
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


def calibrated_scale(threshold: object) -> tuple[float, float]:
    """[lo, hi] of the module doc from a threshold's pixel bounds; :data:`FIXED_SCALE`
    when it has no review bound and typical maximum (a v1 file, a float, None)."""
    typical = getattr(threshold, "pixel_typical", None)
    review = getattr(threshold, "pixel_review", None)
    if typical is None or review is None or review <= typical:
        return FIXED_SCALE
    delta = review - typical
    return float(typical - delta), float(typical + 3.0 * delta)


def opacity(v: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """a = alpha·min(1, 2v): colour fades in below the pixel review bound (v = ½) and is
    fully shown above it, so a defect stands out from the photo (mean |overlay − photo|
    inside transistor defects 19 → 27 grey levels against 0.7·v; good images stay < 1)."""
    return alpha * np.minimum(1.0, OPACITY_RAMP * np.asarray(v, dtype=np.float32))


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
    """rgb·(1 − a) + jet(v)·a with a = :func:`opacity` (v), v the map on the run's scale.

    The image is resized to the map's size `[H, W]` if they differ.
    """
    rgb = image.convert("RGB")
    h, w = anomaly_map.shape
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.BILINEAR)
    v = scale_map(anomaly_map, vmin, vmax)
    heat = colorize(v).astype(np.float32)
    a = opacity(v, alpha)[..., None]
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
