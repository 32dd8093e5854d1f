"""Image -> normalised model input tensors, and model-resolution maps back to any size.

Square mode (MVTec, METHOD.md §1) resizes to S×S. Tiled mode (VisA, §2.7) resizes the
shorter side to S and cuts ⌈long/short⌉ evenly spaced S×S tiles along the longer side;
:func:`stitch` puts per-tile maps back together (overlaps averaged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anoclip.data.images import ImageInput, load_rgb
from anoclip.records import Layout
from anoclip.settings import Tiling

INTERPOLATIONS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def plan_layout(height: int, width: int, tile: int, tiling: Tiling) -> Layout:
    """Choose the resize and tiles for an image of `height`×`width` pixels."""
    if tiling == "none" or height == width:
        return Layout(size=(tile, tile), tile=tile)
    short, long_ = min(height, width), max(height, width)
    new_long = int(tile * long_ / short)  # torchvision's Resize(int) rounding
    axis = 1 if width >= height else 0
    n = max(1, math.ceil(new_long / tile))
    offsets = tuple(round(i * (new_long - tile) / (n - 1)) for i in range(n)) if n > 1 else (0,)
    size = (tile, new_long) if axis == 1 else (new_long, tile)
    return Layout(size=size, tile=tile, axis=axis, offsets=offsets)


def to_tensor(
    img: Image.Image, layout: Layout, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """RGB image -> normalised tiles `[T, 3, S, S]` (PIL bilinear resize, CLIP mean/std)."""
    h, w = layout.size
    resized = img.resize((w, h), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)
    x = x.float().div(255.0)
    x = x.sub(torch.tensor(mean).view(3, 1, 1)).div(torch.tensor(std).view(3, 1, 1))
    s = layout.tile
    if layout.axis == 1:
        tiles = [x[:, :, o : o + s] for o in layout.offsets]
    else:
        tiles = [x[:, o : o + s, :] for o in layout.offsets]
    return torch.stack(tiles)


def stitch(tile_maps: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Per-tile maps `[T, S, S]` -> one map `[H', W']`; overlapping pixels are averaged."""
    if layout.num_tiles == 1:
        return tile_maps[0]
    canvas = tile_maps.new_zeros(layout.size)
    count = tile_maps.new_zeros(layout.size)
    s = layout.tile
    for m, o in zip(tile_maps, layout.offsets):
        window = (
            (slice(None), slice(o, o + s)) if layout.axis == 1 else (slice(o, o + s), slice(None))
        )
        canvas[window] += m
        count[window] += 1
    return canvas / count


def resize_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a map `[..., h, w]` to `size` (no-op when already that size)."""
    if tuple(m.shape[-2:]) == tuple(size):
        return m
    lead = m.shape[:-2]
    x = m.reshape(-1, 1, *m.shape[-2:])
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.reshape(*lead, *size)


@dataclass(frozen=True)
class VisualPreprocess:
    """Image -> model input: resize to `size` (H, W), scale to [0, 1], x' = (x − mean) / std."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        return to_input(images, self)


def to_input(images: ImageInput | Sequence[ImageInput], prep: VisualPreprocess) -> torch.Tensor:
    """One image or a list of images (PIL, path, array) -> normalised input `[B, 3, H, W]`."""
    batch = images if isinstance(images, (list, tuple)) else [images]
    h, w = prep.size
    resample = INTERPOLATIONS[prep.interpolation]
    mean = torch.tensor(prep.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32).view(3, 1, 1)
    out = []
    for img in batch:
        rgb = load_rgb(img).resize((w, h), resample)
        x = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)
        out.append((x.float() / 255.0 - mean) / std)
    return torch.stack(out)
