"""What normal looks like to the patch scorer: the calibration that sets the border
equaliser's classes (border.py) and the global branch's scale (global_score.py).

    set modes    the scored set itself: its patch scores `[N, L]`, image scores and global
                 distances (its majority is good; the estimators look at the lower side)
    bank alone   the bank's images, each scored against the other bank images
                 (leave-one-out) exactly as a new part is scored against the bank: at most
                 PROFILE_IMAGES of them, evenly spaced, computed once per bank and map size

A bank's leave-one-out copies (NormalBank.leave_out, how --normal images calibrate the
threshold) share the profile of the bank they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anoclip.clip.scoring import gaussian_blur
from anoclip.references.bank import NormalBank
from anoclip.references.border import equalise
from anoclip.references.global_score import bank_distance, leave_one_out, set_distance
from anoclip.references.patches import upsample
from anoclip.settings import RefCount, Settings

PROFILE_IMAGES = 16


@dataclass(frozen=True)
class Profile:
    """Calibration patch scores `[M, L]`, image scores `[M]` (after the border equaliser)
    and global distances `[M]` (None: no image statistics)."""

    patches: torch.Tensor
    image: np.ndarray
    glob: np.ndarray | None


def visual_map(
    scores: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], sigma: float
) -> torch.Tensor:
    """One image's patch scores `[L]` -> its map `[H', W']`: bilinear, Gaussian σ px."""
    return gaussian_blur(upsample(scores.view(1, -1), grid, size), sigma)[0]


def map_maxima(
    scores: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], sigma: float
) -> np.ndarray:
    """`[M, L]` -> `[M]` map maxima (what an image's visual score is)."""
    return np.array([float(visual_map(row, grid, size, sigma).max()) for row in scores])


def picks(count: int, most: int = PROFILE_IMAGES) -> list[int]:
    """At most `most` evenly spaced indices of range(count)."""
    if count <= most:
        return list(range(count))
    return sorted({round(i * (count - 1) / (most - 1)) for i in range(most)})


def bank_profile(bank: NormalBank, settings: Settings, size: tuple[int, int]) -> Profile:
    """The bank's leave-one-out profile (module doc), cached on the bank per map size; a
    leave-one-out copy's is that of the bank it came from (whichever is scored first)."""
    s = settings
    bank = bank.profiles.get("bank", bank)
    key = (tuple(size), s.gaussian_sigma, s.border_depth, s.bank_search)
    if key in bank.profiles:
        return bank.profiles[key]
    grid, per = bank.meta.grid, bank.meta.grid[0] * bank.meta.grid[1]
    chosen = picks(bank.num_images) if bank.num_images >= 2 else []
    rows = []
    for j in chosen:
        own = {k: v[j * per : (j + 1) * per].unsqueeze(0) for k, v in bank.features.items()}
        rows.append(bank.leave_out(j).scores(own, search=s.bank_search, nprobe=s.bank_nprobe))
    patches = torch.cat(rows) if rows else torch.zeros(0, per)
    flat = equalise(patches, patches, grid, s.border_depth)
    glob = None
    if bank.stats is not None and bank.num_images >= 2:
        glob = leave_one_out(bank.stats)[chosen].numpy()
    found = Profile(patches, map_maxima(flat, grid, size, s.gaussian_sigma), glob)
    bank.profiles[key] = found
    return found


def global_distance(
    stats: torch.Tensor | None, refs: RefCount, bank: NormalBank | None, memory: Any = None
) -> torch.Tensor | None:
    """`[N]` global distances: to the set's closest others (refs ≠ 0) or the rolling
    `memory`'s (memory.Memory), to the bank, or the smaller of the two; None without image
    statistics."""
    if stats is None:
        return None
    own = set_distance(stats) if refs else None
    if not refs and memory is not None and len(memory) and memory.has_stats:
        own = memory.global_distance(stats)
    far = None
    if bank is not None and bank.stats is not None:
        far = bank_distance(stats, bank.stats)
    if own is None or far is None:
        return own if far is None else far
    return torch.minimum(own, far)
