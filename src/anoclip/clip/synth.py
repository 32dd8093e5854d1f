"""Synthesized anomalies for test-time adaptation (METHOD.md §3.5, DRAEM-style).

1. A Perlin-noise mask M (threshold 0.5) covering 1–20% of the image.
2. A source A: the test image itself after strong colour jitter, a 90° rotation and patch
   shuffling (or a user texture image).
3. x_syn = (1 − M)⊙x + M⊙((1 − b)·A + b·x), b ~ U(0, 0.8).
4. Token labels: y_i = 1 where M covers more than half of patch i's cell.

Everything is drawn from the given generator, so results are reproducible by seed. A
texture folder (`synth_textures`) is listed once and one texture decoded per batch
(:class:`Textures`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anoclip.data.images import load_rgb
from anoclip.data.listing import expand_inputs
from anoclip.errors import UsageError

MIN_AREA, MAX_AREA = 0.01, 0.20


@dataclass
class Synthetic:
    """A synthesized anomaly: image `[3, H, W]` in [0, 1], mask `[H, W]`, labels `[h·w]`."""

    image: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0, *shape: int) -> torch.Tensor:
    return (
        lo + (hi - lo) * torch.rand(*shape, generator=g)
        if shape
        else lo + (hi - lo) * float(torch.rand((), generator=g))
    )


def perlin(shape: tuple[int, int], res: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    """2-D gradient (Perlin) noise `[H, W]` with `res` lattice cells per axis, about in [−1, 1]."""
    h, w = shape
    angles = 2 * math.pi * torch.rand(res[0] + 1, res[1] + 1, generator=g)
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)  # [ry+1, rx+1, 2]
    y = torch.arange(h, dtype=torch.float32) * res[0] / h
    x = torch.arange(w, dtype=torch.float32) * res[1] / w
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    y0, x0 = yy.floor().long(), xx.floor().long()
    fy, fx = yy - y0, xx - x0

    def corner(dy: int, dx: int) -> torch.Tensor:
        gvec = grads[y0 + dy, x0 + dx]
        return gvec[..., 0] * (fx - dx) + gvec[..., 1] * (fy - dy)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)

    sy, sx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - sx) + corner(0, 1) * sx
    bottom = corner(1, 0) * (1 - sx) + corner(1, 1) * sx
    return (top * (1 - sy) + bottom * sy) * math.sqrt(2)


def token_labels(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[H, W]` mask -> `[h·w]` labels: 1 where the mask covers more than half of a cell."""
    cover = F.adaptive_avg_pool2d(mask[None, None].float(), grid)[0, 0]
    return (cover > 0.5).float().reshape(-1)


def perlin_mask(
    shape: tuple[int, int], grid: tuple[int, int], g: torch.Generator, tries: int = 50
) -> torch.Tensor:
    """A thresholded Perlin mask with area in [1%, 20%] that labels at least one token."""
    h, w = shape
    for _ in range(tries):
        res = (
            2 ** int(torch.randint(1, 5, (), generator=g)),
            2 ** int(torch.randint(1, 5, (), generator=g)),
        )
        noise = perlin(shape, res, g)
        mask = (noise > 0.5).float()
        area = float(mask.mean())
        if MIN_AREA <= area <= MAX_AREA and token_labels(mask, grid).any():
            return mask
    # fallback: an axis-aligned ellipse of about 5% of the image
    cy, cx = _uniform(g, 0.3, 0.7) * h, _uniform(g, 0.3, 0.7) * w
    ry, rx = 0.18 * h, 0.09 * w
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).float()


def source_from_image(x: torch.Tensor, g: torch.Generator, blocks: int = 4) -> torch.Tensor:
    """The test image `[3, H, W]` in [0, 1] with colour jitter, a 90° rotation and shuffled
    blocks: foreign-looking content that still has the image's own statistics."""
    c, h, w = x.shape
    out = x[torch.randperm(3, generator=g)]
    gain = _uniform(g, 0.5, 1.5, 3, 1, 1)
    shift = _uniform(g, -0.25, 0.25, 3, 1, 1)
    out = (out * gain + shift).clamp(0, 1)
    if float(torch.rand((), generator=g)) < 0.3:
        out = 1 - out
    out = torch.rot90(out, int(torch.randint(1, 4, (), generator=g)), dims=(1, 2))
    if out.shape[1:] != (h, w):
        out = F.interpolate(out[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    bh, bw = h // blocks, w // blocks
    tiles = out[:, : bh * blocks, : bw * blocks].reshape(c, blocks, bh, blocks, bw)
    tiles = tiles.permute(1, 3, 0, 2, 4).reshape(blocks * blocks, c, bh, bw)
    tiles = tiles[torch.randperm(blocks * blocks, generator=g)]
    shuffled = tiles.reshape(blocks, blocks, c, bh, bw).permute(2, 0, 3, 1, 4)
    result = out.clone()
    result[:, : bh * blocks, : bw * blocks] = shuffled.reshape(c, bh * blocks, bw * blocks)
    return result


def synthesize(
    x: torch.Tensor,
    grid: tuple[int, int],
    g: torch.Generator,
    texture: torch.Tensor | None = None,
) -> Synthetic:
    """Synthesize an anomaly on image `x` `[3, H, W]` (values in [0, 1])."""
    _, h, w = x.shape
    mask = perlin_mask((h, w), grid, g).to(x.device)
    source = texture if texture is not None else source_from_image(x.cpu(), g).to(x.device)
    beta = _uniform(g, 0.0, 0.8)
    m = mask[None]
    image = (1 - m) * x + m * ((1 - beta) * source + beta * x)
    return Synthetic(image=image, mask=mask, labels=token_labels(mask.cpu(), grid).to(x.device))


class Textures:
    """Texture images of a folder as synthesized-anomaly sources: listed on first use, one
    drawn (uniformly, from the generator) and decoded per call."""

    def __init__(self, folder: str | None) -> None:
        self.folder = folder
        self._files: list[Path] | None = None

    def draw(
        self, g: torch.Generator, size: tuple[int, int], device: torch.device
    ) -> torch.Tensor | None:
        """A texture `[3, H, W]` in [0, 1] resized to `size` (H, W), or None without a
        folder (then nothing is drawn from `g`)."""
        if not self.folder:
            return None
        if self._files is None:
            self._files = expand_inputs([self.folder])
        if not self._files:
            raise UsageError(f"synth_textures: no images in {self.folder}")
        img = load_rgb(self._files[int(torch.randint(len(self._files), (), generator=g))])
        img = img.resize((size[1], size[0]))
        pixels = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(pixels).permute(2, 0, 1).to(device)
