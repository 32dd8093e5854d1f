"""Border equalisation: patch scores near the image border on the interior's scale.

A CNN's zero padding, and r×r neighbourhoods clipped at the edge, make the features of the
outer patches depend on where they sit; their nearest-neighbour distances are larger and
spread wider than the interior's, so the map maxima of good images crowd the border
(magnetic tile, scored as a set: 82 % of good tiles' maxima in the outer 10 % band, which
is 36 % of the area; benchmarks/visible_defects.py measures it on every set).

Each position p of the h×w grid falls in a class by its distance to the nearest horizontal
and vertical edge, each clipped at the depth K (`border_depth`):

    k(p) = (min(d_y(p), K), min(d_x(p), K))        (K, K) = the interior

and over calibration scores (the scored set itself in the set modes, whose majority is
good; the bank's images scored leave-one-out when each image is scored alone) each class
has a centre c_k (median) and a spread σ_k (RMS below the median: defects only push
scores up, so the lower side is clean). A class is put on the interior's scale where that
lowers its scores: its spread narrowed to the interior's (never widened), and no score
raised:

    s'(i, p) = min(s(i, p), c_in + (s(i, p) − c_k(p)) · min(1, σ_in / σ_k(p)))

The interior is untouched, a border patch keeps its rank within its class, and a defect on
the border still stands out by as many spreads as it did (a flaw is not refilled away).
Never raising matters on aligned products: transistor's border is quiet background
(σ_k ≪ σ_in), and stretching it to the interior's spread put 82 % of good maxima there
(benchmarks/visible_defects.py); narrowed only, transistor's set scores are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def position_classes(grid: tuple[int, int], depth: int) -> torch.Tensor:
    """`[L]` class index of each grid position (row-major): d_y·(K+1) + d_x with d_y, d_x
    the distances to the nearest horizontal / vertical edge clipped at K = `depth`; the
    interior is (K+1)² − 1."""
    h, w = grid
    yy = torch.arange(h).view(-1, 1).expand(h, w)
    xx = torch.arange(w).view(1, -1).expand(h, w)
    dy = torch.minimum(yy, h - 1 - yy).clamp(max=depth)
    dx = torch.minimum(xx, w - 1 - xx).clamp(max=depth)
    return (dy * (depth + 1) + dx).flatten()


def median_spread(values: torch.Tensor) -> tuple[float, float]:
    """(median, RMS of the values at or below it) of a flat tensor (the median of an even
    count is the mean of the middle two, as numpy's)."""
    x = values.double().flatten()
    c = x.quantile(0.5) if x.numel() <= 2**24 else x.median()
    below = x[x <= c] - c
    return float(c), float(below.pow(2).mean().sqrt()) if below.numel() else 0.0


@dataclass(frozen=True)
class BorderProfile:
    """Per-class centres and spreads `[C]` on one grid (classes `[L]`); `inner` the
    interior's class."""

    classes: torch.Tensor
    centre: torch.Tensor
    spread: torch.Tensor
    inner: int

    @classmethod
    def fit(cls, calibration: torch.Tensor, grid: tuple[int, int], depth: int) -> BorderProfile:
        """From calibration patch scores `[M, L]` on `grid` (module doc)."""
        k = position_classes(grid, depth)
        inner = (depth + 1) ** 2 - 1
        n = inner + 1
        centre, spread = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for c in range(n):
            sel = k == c
            if sel.any():
                centre[c], spread[c] = median_spread(calibration[:, sel])
        return cls(k, centre, spread, inner)

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """Patch scores `[N, L]` -> s' of the module doc (a class without spread, or an
        interior without one, is left as it is)."""
        c_in, s_in = self.centre[self.inner], self.spread[self.inner]
        if s_in <= 0:
            return scores
        k = self.classes
        c, s = self.centre[k], self.spread[k]
        ok = (s > 0) & (k != self.inner)
        gain = torch.where(ok, (s_in / s.clamp(min=1e-12)).clamp(max=1.0), torch.ones_like(s))
        shift = torch.where(ok, c, c_in)
        x = scores.double()
        return torch.minimum(x, c_in + (x - shift) * gain).to(scores.dtype)


def equalise(
    scores: torch.Tensor, calibration: torch.Tensor, grid: tuple[int, int], depth: int
) -> torch.Tensor:
    """`scores` `[N, L]` with the border classes mapped onto the interior's scale, the
    classes' centres and spreads taken from `calibration` `[M, L]`; depth 0 = unchanged."""
    if depth <= 0 or calibration.shape[0] == 0:
        return scores
    return BorderProfile.fit(calibration, grid, depth).apply(scores)
