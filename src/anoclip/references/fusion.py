"""Joint vision-language scoring: fusing the text branch with the visual references
(METHOD.md §3.4, WinCLIP+-style by default).

    "linear":   map = α·text + (1−α)·vis;        score = β·p_a(CLS) + (1−β)·max(vis)
    "harmonic": weighted harmonic means 1 / (α/text + (1−α)/vis), same for the score
    "batch_z":  each component z-scored over all pixels (scores: over all images) of the
                unlabeled batch, combined with α / β, then squashed by σ into [0, 1]

The text map here is the AnoCLIP map at `fusion_temperature` (0.07): at τ = 1 it stays
within ~1e-3 of 0.5 and would be swamped by the visual distances. Never min-max
normalise per image: that destroys the ranking across images.
"""

from __future__ import annotations

import torch

_EPS = 1e-6


Moments = tuple[float, float]  # mean, standard deviation


def fuse_maps(
    text: torch.Tensor,
    vis: torch.Tensor,
    how: str,
    alpha: float,
    stats: tuple[Moments, Moments] | None = None,
) -> torch.Tensor:
    """Text and visual maps `[U, H, W]` (values in [0, 1]) -> fused maps in [0, 1].

    `stats`: batch_z's (text, visual) moments over the whole set; by default those of the
    given tensors."""
    if how == "linear":
        return alpha * text + (1 - alpha) * vis
    if how == "harmonic":
        return 1.0 / (alpha / text.clamp_min(_EPS) + (1 - alpha) / vis.clamp_min(_EPS))
    if how == "batch_z":
        (mt, st), (mv, sv) = stats or (moments(text), moments(vis))
        return torch.sigmoid(alpha * (text - mt) / st + (1 - alpha) * (vis - mv) / sv)
    raise ValueError(f"unknown fusion {how!r}: use linear, harmonic or batch_z")


def fuse_scores(text: torch.Tensor, vis_max: torch.Tensor, how: str, beta: float) -> torch.Tensor:
    """Image scores `[N]`: text p_a(CLS) and the maximum of the visual map."""
    return fuse_maps(text, vis_max, how, beta)


def moments(x: torch.Tensor) -> Moments:
    """Mean and standard deviation over all elements (float64)."""
    x = x.double()
    return float(x.mean()), max(float(x.std()), 1e-12) if x.numel() > 1 else 1.0


class RunningMoments:
    """Mean and standard deviation accumulated over chunks (float64 sums)."""

    def __init__(self) -> None:
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        self.n += x.numel()
        self.total += float(x.sum())
        self.squares += float((x * x).sum())

    def result(self) -> Moments:
        mean = self.total / max(self.n, 1)
        var = max(self.squares / max(self.n, 1) - mean * mean, 0.0) * self.n / max(self.n - 1, 1)
        return mean, max(var**0.5, 1e-12)
