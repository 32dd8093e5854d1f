"""From embeddings to anomaly probabilities, maps and image scores (METHOD.md §2.4).

    p_a(e) = softmax([cos(e, f_n), cos(e, f_a)] / τ)[a]

Map: p_a per patch on the h×w grid, replicate-pad 1, 3×3 average pool (stride 1),
bilinear upsampling with align_corners=True to the tile size, layer maps averaged;
optional Gaussian blur. Image score: p_a of the CLS averaged over views, then over the
image's tiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / ‖x‖ along `dim`, written as the official code writes it (zero vectors stay 0)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def text_cosines(emb: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """`[..., C]` embeddings (any norm) -> `[..., 2]` cosines n(e)·F; F is `[C, 2]`."""
    return l2_normalize(emb) @ text_features.to(emb.dtype)


def probs_from_cosines(cos: torch.Tensor, temperature: float) -> torch.Tensor:
    """`[..., 2]` cosines -> `[...]` p_a = softmax(cos / τ)[abnormal]."""
    return (cos / temperature).softmax(dim=-1)[..., 1]


def anomaly_logits(
    emb: torch.Tensor, text_features: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`[..., C]` embeddings (any norm) -> `[..., 2]` logits n(e)·F / τ; F is `[C, 2]`."""
    return text_cosines(emb, text_features) / temperature


def patch_map(probs: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch probabilities `[N, L]` (L = h·w) -> pooled, upsampled maps `[N, *size]`."""
    n = probs.shape[0]
    m = probs.reshape(n, 1, *grid)
    m = F.pad(m, (1, 1, 1, 1), mode="replicate")
    m = F.avg_pool2d(m, 3, stride=1)
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=True)
    return m[:, 0]


def tile_maps(
    text_cos: torch.Tensor,
    grid: tuple[int, int],
    tile: int,
    temperature: float,
    sigma: float = 0.0,
) -> torch.Tensor:
    """Text-branch maps per tile `[T, S, S]` (S = `tile`) from cosines `[T, nL, L, 2]`:
    p_a at `temperature` per patch and layer -> :func:`patch_map` -> mean over layers ->
    Gaussian blur of `sigma` pixels (0: none)."""
    n_tiles, n_layers, length, _ = text_cos.shape
    probs = probs_from_cosines(text_cos, temperature).reshape(n_tiles * n_layers, length)
    maps = patch_map(probs, grid, (tile, tile)).view(n_tiles, n_layers, tile, tile)
    return gaussian_blur(maps.mean(dim=1), sigma)


def image_scores(cls_cos: torch.Tensor, temperature: float, counts: Sequence[int]) -> torch.Tensor:
    """Image scores `[N]` from CLS cosines `[T, V, 2]`: p_a averaged over the V views of
    each tile, then over the tiles of each image (`counts[i]` tiles for image i)."""
    per_tile = probs_from_cosines(cls_cos, temperature).mean(dim=1)
    return torch.stack([t.mean() for t in per_tile.split(list(counts))])


def gaussian_blur(m: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of maps `[..., H, W]` (scipy.ndimage's 'reflect' borders)."""
    if sigma <= 0:
        return m
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(m.dtype).to(m.device)
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    x = m.reshape(-1, 1, h, w)
    x = _symmetric_pad(x, radius, dim=-1)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = _symmetric_pad(x, radius, dim=-2)
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.reshape(*lead, h, w)


def _symmetric_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Half-sample symmetric padding (d c b a | a b c d | d c b a), repeated as needed."""
    n = x.shape[dim]
    idx = torch.arange(-r, n + r)
    period = 2 * n
    idx = torch.remainder(idx, period)
    idx = torch.where(idx >= n, period - 1 - idx, idx)
    return x.index_select(dim, idx.to(x.device))
