"""Bounds from an unlabeled set whose majority is normal, at any defect rate below one half.

Defects only ever push scores up, so the normal scores are the set's densest cluster and its
lower side is uncontaminated. With x₁ … xₙ the scores (or per-image map maxima):

    c   = half-sample mode of x                      (the normal scores' centre)
    σ_L = √( mean_{xᵢ ≤ c} (xᵢ − c)² )                (their spread, from below c only)
    t_r = c + k_r·σ_L      review bound  (k_r = 1.75: a Gaussian normal population exceeds
                                           it with probability 4 %)
    t_d = c + k_d·σ_L      defect bound  (k_d = 4: 3·10⁻⁵)

The half-sample mode (Bickel & Frühwirth 2006) repeatedly keeps the shortest interval that
holds half of the remaining points; its breakdown point is 50 %, and unlike the median it
stays on the normal cluster when 40 % of the set is defective (the median then sits among
the defects, which is why median + 3.5·1.4826·MAD, the previous rule, let most defects of a
defect-heavy set pass). σ_L ignores everything above c, so no count of defects inflates it,
and nothing here assumes a defect rate. Real normal scores are right-skewed, so more good
parts than 4 % land in the review band (benchmarks/decisions.py measures how many). k_r was
chosen on the real-feature transistor cases of benchmarks/decisions.py, the only honest
category here (k_r = 2 let 33 % of rare defects pass; 1.5 flagged 32 % of good parts in a
defect-heavy set); k_d was not tuned.
If more than half the scores below c tie with it (σ_L = 0), the spread falls back to
1.4826·MAD of all scores, and to 0 (every score above c is a defect) when that is 0 too.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from anoclip.errors import CalibrationError
from anoclip.references.robust import MAD_TO_SD, half_sample_mode, left_spread

__all__ = ["MAD_TO_SD", "half_sample_mode", "left_spread", "set_bounds"]
REVIEW_K = 1.75
DEFECT_K = 4.0
MIN_UNLABELED = 3


def set_bounds(
    values: Iterable[float], review_k: float = REVIEW_K, defect_k: float = DEFECT_K
) -> tuple[float, float, float]:
    """(c, t_r, t_d) of the module doc for the finite `values` (at least 3)."""
    x = np.asarray(list(values), dtype=np.float64)
    if x.size < MIN_UNLABELED:
        raise CalibrationError(
            f"need at least {MIN_UNLABELED} images for an unsupervised threshold, got {x.size}"
        )
    if not 0 < review_k <= defect_k:
        raise CalibrationError(f"need 0 < review k ≤ defect k, got {review_k} and {defect_k}")
    c = half_sample_mode(x)
    spread = left_spread(x, c)
    return c, c + review_k * spread, c + defect_k * spread
