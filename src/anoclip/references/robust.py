"""Robust centre and spread of scores whose majority is normal (defects only push scores
up): the half-sample mode and the RMS deviation below it. The set rule
(decide/unlabeled.py) and the global branch's calibration (global_score.py) use them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from anoclip.errors import CalibrationError

MAD_TO_SD = 1.4826  # 1 / Φ⁻¹(3/4)


def half_sample_mode(values: Iterable[float]) -> float:
    """The half-sample mode: shrink the sorted sample to its shortest half until ≤ 3 points
    remain; then the mean of 2, or of the closer pair of 3 (the middle one on a tie)."""
    x = np.sort(np.asarray(list(values), dtype=np.float64))
    if x.size == 0:
        raise CalibrationError("no scores to find a mode in")
    while x.size > 3:
        h = (x.size + 1) // 2
        widths = x[h - 1 :] - x[: x.size - h + 1]
        start = int(np.argmin(widths))  # the first of equally short halves
        x = x[start : start + h]
    if x.size == 3:
        left, right = x[1] - x[0], x[2] - x[1]
        x = x[:2] if left < right else x[1:] if right < left else x[1:2]
    return float(x.mean())


def left_spread(values: Iterable[float], centre: float) -> float:
    """σ_L = √(mean (xᵢ − c)² over xᵢ ≤ c), with the MAD fallback of the module doc."""
    x = np.asarray(list(values), dtype=np.float64)
    below = x[x <= centre] - centre
    spread = float(np.sqrt(np.mean(below**2))) if below.size else 0.0
    if spread > 0:
        return spread
    return MAD_TO_SD * float(np.median(np.abs(x - np.median(x))))
