"""Heat-map overlays of anomaly maps on their images (no plotting dependency)."""

from __future__ import annotations

import numpy as np
from PIL import Image

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
    """Map -> [0, 1] for display: fixed range if given, else the map's own min-max."""
    lo = float(anomaly_map.min()) if vmin is None else vmin
    hi = float(anomaly_map.max()) if vmax is None else vmax
    if hi <= lo:
        return np.zeros_like(anomaly_map, dtype=np.float32)
    return ((anomaly_map - lo) / (hi - lo)).astype(np.float32)


def overlay(
    image: Image.Image,
    anomaly_map: np.ndarray,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """Blend the coloured map over the image (resized to the map's size if they differ)."""
    rgb = image.convert("RGB")
    h, w = anomaly_map.shape
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.BILINEAR)
    heat = colorize(scale_map(anomaly_map, vmin, vmax)).astype(np.float32)
    base = np.asarray(rgb, dtype=np.float32)
    mixed = (1 - alpha) * base + alpha * heat
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))
