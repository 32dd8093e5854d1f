"""From embeddings to anomaly probabilities, maps and image scores (METHOD.md §2.4).

    p_a(e) = softmax([cos(e, f_n), cos(e, f_a)] / τ)[a]

Map: p_a per patch on the h×w grid, replicate-pad 1, 3×3 average pool (stride 1),
bilinear upsampling with align_corners=True to the tile size; optional Gaussian blur.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """x / ‖x‖ along `dim`, written as the reference writes it (zero vectors stay zero)."""
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


def anomaly_prob(
    emb: torch.Tensor, text_features: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`[..., C]` -> `[...]` probability of the abnormal state."""
    return anomaly_logits(emb, text_features, temperature).softmax(dim=-1)[..., 1]


def patch_map(probs: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch probabilities `[N, L]` (L = h·w) -> pooled, upsampled maps `[N, *size]`."""
    n = probs.shape[0]
    m = probs.reshape(n, 1, *grid)
    m = F.pad(m, (1, 1, 1, 1), mode="replicate")
    m = F.avg_pool2d(m, 3, stride=1)
    m = F.interpolate(m, size=size, mode="bilinear", align_corners=True)
    return m[:, 0]


def image_score(
    cls_views: torch.Tensor, text_features: torch.Tensor, temperature: float
) -> torch.Tensor:
    """CLS embeddings of V views `[N, V, C]` -> `[N]` mean abnormal probability."""
    return anomaly_prob(cls_views.float(), text_features, temperature).mean(dim=1)


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
