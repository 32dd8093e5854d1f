"""The global branch: changes every patch shares (finer or coarser texture, contrast, blur,
orientation, another part), which a patch-level nearest-neighbour score cannot see.

Image statistics, from the raw stage maps x_l `[N, C_l, h_l, w_l]` (timm stages, or CLIP
token maps), per stage the channels' mean and standard deviation over positions:

    u_l = n([mean_p x_l ; std_p x_l])        `[N, 2·C_l]`
    u   = concat_l u_l / √#stages            `[N, D]`, unit norm

    d(i, j) = ½(1 − ⟨u_i, u_j⟩) = mean_l ½(1 − ⟨u_{l,i}, u_{l,j}⟩)

The global distance g of an image is its distance to what is normal: to the nearest bank
image, and in a set to the others by the interval mean of the ⌈0.3·(N − 1)⌉ closest (a
change that a few images share is not explained away by them); in a set with a bank the
smaller of the two ("min", as bank_combine does for patches).

Fusion, on the scale the calibration sets (never by hand): with σ_p the spread of the
patch image scores and (c_g, σ_g) the centre and spread of ln g over the calibration images
(the scored set itself in the set modes; the bank's images scored leave-one-out alone),

    z    = (ln g − c_g) / σ_g
    s    = s_p + σ_p · max(0, z − κ)          κ = `global_k` (default 4: the set rule's
                                               defect bound, in the same spreads)

so a normal image's score is its patch score, and a change z spreads beyond the normal
spread raises it by as many patch spreads. Distances are positive with a long right tail
(good woven textures reach 4× their median, a blur 35×), so their spread is taken in log
units; from fewer than ROBUST_MIN values (a few known-good images, whose sample standard
deviation is off by ±40 % at n = 4) it is at least ln 2 / 2: an image at twice the
typical distance sits two spreads above it (measured: good woven images' own spread is
0.45). The image is noted "global_change" when the global term adds to its score; maps
stay patch-level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anoclip.references.robust import MAD_TO_SD, half_sample_mode, left_spread

ROBUST_MIN = 8  # calibration values from which centre / spread are the set rule's
SHARE = 0.3  # a set's global distance: interval mean over the closest 30 % of the others
SMALL_SPREAD = math.log(2) / 2  # the least log spread of fewer calibration values


def image_statistics(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stage maps `[N, C_l, h_l, w_l]` -> unit descriptors `[N, Σ_l 2·C_l]` (module doc)."""
    parts = []
    for m in maps:
        x = m.float().flatten(2)
        parts.append(F.normalize(torch.cat([x.mean(2), x.std(2, correction=0)], 1), dim=-1))
    return torch.cat(parts, 1) / math.sqrt(len(parts))


def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`[N, D]`, `[M, D]` unit descriptors -> `[N, M]` d = ½(1 − ⟨a, b⟩)."""
    return (0.5 * (1.0 - a.double() @ b.double().T)).clamp(min=0.0)


def set_distance(stats: torch.Tensor, share: float = SHARE) -> torch.Tensor:
    """`[N]`: each image's interval-mean distance to the ⌈share·(N − 1)⌉ closest others."""
    n = stats.shape[0]
    if n < 2:
        return torch.full((n,), float("nan"), dtype=torch.float64)
    d = distances(stats, stats)
    d.fill_diagonal_(float("inf"))
    return closest_mean(d, share, n - 1)


def reference_distance(
    stats: torch.Tensor, references: torch.Tensor, share: float = SHARE
) -> torch.Tensor:
    """`[N]`: each image's interval-mean distance to the ⌈share·M⌉ closest of `references`
    `[M, D]` (other images, e.g. a rolling memory's, as :func:`set_distance` in a set)."""
    return closest_mean(distances(stats, references), share, references.shape[0])


def closest_mean(d: torch.Tensor, share: float, count: int) -> torch.Tensor:
    """`[N, M]` distances -> `[N]` the mean of each row's ⌈share·count⌉ smallest."""
    k = max(1, math.ceil(share * count))
    return d.topk(k, dim=1, largest=False).values.mean(1)


def bank_distance(stats: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """`[N]`: each image's distance to its nearest bank image (`bank` `[M, D]`)."""
    return distances(stats, bank).min(1).values


def leave_one_out(bank: torch.Tensor) -> torch.Tensor:
    """`[M]`: each bank image's distance to its nearest other bank image."""
    d = distances(bank, bank)
    d.fill_diagonal_(float("inf"))
    return d.min(1).values


def centre_spread(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(c, σ) of calibration values: from ROBUST_MIN values on (a set with its defects) the
    half-sample mode and 1.4826·MAD about it (both sides: good images' global distances
    have a long right tail, which the set rule's spread below c misses, so a third of good
    woven textures were noted in dual mode), falling back to the spread below c when the
    MAD is 0; else the median and the sample standard deviation (a few known-good images)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size >= ROBUST_MIN:
        c = half_sample_mode(x)
        mad = MAD_TO_SD * float(np.median(np.abs(x - c)))
        return c, mad if mad > 0 else left_spread(x, c)
    if x.size < 2:
        return (float(x[0]) if x.size else 0.0), 0.0
    return float(np.median(x)), float(np.std(x, ddof=1))


def fuse(
    patch: torch.Tensor,
    glob: torch.Tensor,
    patch_calibration: Sequence[float] | np.ndarray,
    glob_calibration: Sequence[float] | np.ndarray,
    k: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused image scores `[N]` (module doc) and `[N]` bool, the images whose global term
    adds to the score; unchanged where a spread is 0 or g is not finite."""
    _, sd_p = centre_spread(patch_calibration)
    logs = np.log(np.clip(np.asarray(glob_calibration, dtype=np.float64), 1e-12, None))
    c_g, sd_g = centre_spread(logs)
    if logs[np.isfinite(logs)].size < ROBUST_MIN:
        sd_g = max(sd_g, SMALL_SPREAD)
    if sd_p <= 0 or sd_g <= 0:
        return patch, torch.zeros(patch.shape[0], dtype=torch.bool)
    z = (glob.double().clamp(min=1e-12).log() - c_g) / sd_g
    extra = (z - k).clamp(min=0.0).nan_to_num(0.0)
    return (patch.double() + sd_p * extra).to(patch.dtype), extra > 0
