"""The 22 augmented views of the image score (METHOD.md §2.4), built on normalised tensors.

identity; rotations ±π/16, ±π/8, ±3π/16, ±π/4; translations (±0.2, ±0.2), (±0.1, ±0.1) in
[-1, 1] grid units; horizontal flip; luma grayscale; rotations by 90°, 180°, 270°.
Rotations and translations use affine grid sampling with reflection padding and
align_corners=True, as the official code does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NUM_VIEWS = 22
_ANGLES = (
    -math.pi / 4,
    -3 * math.pi / 16,
    -math.pi / 8,
    -math.pi / 16,
    math.pi / 16,
    math.pi / 8,
    3 * math.pi / 16,
    math.pi / 4,
)
_SHIFTS = (
    (0.2, 0.2),
    (-0.2, 0.2),
    (-0.2, -0.2),
    (0.2, -0.2),
    (0.1, 0.1),
    (-0.1, 0.1),
    (-0.1, -0.1),
    (0.1, -0.1),
)
_LUMA = (0.299, 0.587, 0.114)


def _affine_thetas() -> torch.Tensor:
    """`[16, 2, 3]` affine matrices: 8 rotations then 8 translations (float64 -> float32)."""
    mats = [[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]] for a in _ANGLES]
    mats += [[[1.0, 0.0, dx], [0.0, 1.0, dy]] for dx, dy in _SHIFTS]
    return torch.tensor(mats, dtype=torch.float64).float()


def augmented_views(x: torch.Tensor) -> torch.Tensor:
    """`[B, 3, H, W]` -> `[B, 22, 3, H, W]`; view 0 is the identity."""
    b, c, h, w = x.shape
    thetas = _affine_thetas().to(x.device, x.dtype)
    n_aff = thetas.shape[0]
    src = x.unsqueeze(1).expand(b, n_aff, c, h, w).reshape(b * n_aff, c, h, w)
    grid = F.affine_grid(thetas.repeat(b, 1, 1), [b * n_aff, c, h, w], align_corners=True)
    affine = F.grid_sample(
        src, grid, mode="bilinear", padding_mode="reflection", align_corners=True
    )
    r, g, bl = x.unbind(1)
    grey = (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * bl).unsqueeze(1).expand(b, c, h, w)
    rot90 = [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 2, 3)]
    views = [
        x.unsqueeze(1),
        affine.view(b, n_aff, c, h, w),
        x.flip(-1).unsqueeze(1),
        grey.unsqueeze(1),
    ] + [v.unsqueeze(1) for v in rot90]
    return torch.cat(views, dim=1)
