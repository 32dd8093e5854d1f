"""Label-free decision thresholds, and their precision / recall against labels.

METHOD.md P8: thresholds are never fitted on labelled test data. Two sources are allowed:

* **Known-good images** (``method="normal"``): the image threshold is a conservative
  estimate of the (1 − α) quantile of the normal score distribution, α being the target
  false-reject rate (FRR, default 1 %), so that a fresh normal image is rejected with
  probability at most α — with confidence γ (default 0.9) over the draw of the normals.
* **The unlabeled set itself** (``method="unsupervised"``): a robust outlier rule on the
  set's own scores, for when no known-good images exist.

A score strictly above the threshold is a defect; a score equal to it is ok.

Estimator from n normal scores x₍₁₎ ≤ … ≤ x₍ₙ₎
------------------------------------------------

1. **Distribution-free order statistic**, whenever n allows. Let

       k = min{ j : P(Binomial(n, 1 − α) ≤ j − 1) ≥ γ } .

   If k ≤ n the threshold is t = x₍ₖ₎. For any continuous score distribution F,
   P(F(x₍ₖ₎) ≥ 1 − α) = P(Binomial(n, 1 − α) ≤ k − 1) ≥ γ, so the achieved FRR 1 − F(t)
   is ≤ α with probability ≥ γ, whatever F is. The smallest such n is
   ⌈ln(1 − γ) / ln(1 − α)⌉: 230 for α = 1 %, γ = 0.9 (then k = n: the maximum);
   45 for α = 5 %. So with the few normals we expect (4–100) and α = 1 % this branch
   never applies, and we need a tail model.

2. **Exponential-tail upper bound** (the fallback). Take the top half, m = ⌈n/2⌉ scores,
   and their exceedances over the anchor u = x₍ₙ₋ₘ₎; fit an exponential tail to them:

       β̂  = (1/m) Σᵢ₌ₙ₋ₘ₊₁..ₙ (x₍ᵢ₎ − u)              (mean exceedance)
       β⁺ = 2m β̂ / χ²_{1−γ}(2m)                       (γ upper confidence bound of β)
       p_u = (m + 1) / (n + 1)                          (E[1 − F(u)])
       t  = max( u + β⁺ · ln(p_u / α),  x₍ₙ₎ ) .

   If the tail above u is exponential, P(X > u + y) = p_u·e^{−y/β} and, by Rényi's
   representation, 2mβ̂/β ~ χ²(2m) exactly, so β⁺ ≥ β with probability γ; p_u is replaced
   by its expectation, so the confidence is approximate (simulated P(FRR > α) = 0.08–0.10
   for the exponential itself). The rule is location- and scale-invariant (it only uses
   differences of scores), never below the largest normal score, and conservative for
   tails that decay faster than exponentially (normal, logistic, Gumbel, Weibull with
   shape > 1, bounded scores such as probabilities). It is NOT conservative for heavier
   tails (lognormal with σ ≳ 1, Student t with few degrees of freedom, Pareto): see the
   table. With n = 5 it extrapolates far beyond the data — the honest price of so few
   normals.

A normal-theory tolerance bound (mean + k·sd) was rejected: it under-covers badly for
skewed scores (achieved FRR ≈ 2.5–3 % for a lognormal σ = 0.5 or an exponential at
n = 100). A log transform fixes lognormal data but breaks location invariance.

Simulated behaviour (α = 1 %, γ = 0.9; 4,000 calibrations per cell; the achieved FRR of
each threshold is computed exactly as 1 − F(t), the limit of infinitely many fresh normals;
``benchmarks/calibration.py`` prints this table by running ``upper_quantile_bound``)::

    distribution       n  estimator        median FRR  mean FRR  90th pct FRR  P(FRR > 1%)
    normal             5  exponential-tail     0.0000    0.0006        0.0000        0.010
    normal            20  exponential-tail     0.0000    0.0002        0.0001        0.003
    normal           100  exponential-tail     0.0001    0.0002        0.0005        0.000
    normal           300  order-statistic      0.0023    0.0033        0.0075        0.048
    gumbel             5  exponential-tail     0.0000    0.0023        0.0016        0.043
    gumbel            20  exponential-tail     0.0004    0.0019        0.0049        0.039
    gumbel           100  exponential-tail     0.0023    0.0029        0.0058        0.017
    exponential        5  exponential-tail     0.0000    0.0059        0.0085        0.092
    exponential       20  exponential-tail     0.0010    0.0037        0.0098        0.098
    exponential      100  exponential-tail     0.0036    0.0046        0.0094        0.084
    lognormal σ=0.5    5  exponential-tail     0.0000    0.0038        0.0052        0.067
    lognormal σ=0.5   20  exponential-tail     0.0013    0.0035        0.0089        0.086
    lognormal σ=0.5  100  exponential-tail     0.0038    0.0045        0.0089        0.069
    lognormal σ=1      5  exponential-tail     0.0030    0.0138        0.0348        0.283
    lognormal σ=1     20  exponential-tail     0.0078    0.0122        0.0273        0.411
    lognormal σ=1    100  exponential-tail     0.0070    0.0088        0.0190        0.356
    (every distribution at n = 300: order statistic, P(FRR > 1 %) = 0.05 ± 0.005)

Read: with exponential-or-lighter tails the achieved FRR is under the 1 % target in ≥ 90 %
of calibrations, at every n; for the normal the bound is very loose at n = 5 (FRR ≈ 0, the
threshold far out in the tail), so expect missed subtle defects rather than false rejects.
From n = 230 the distribution-free order statistic takes over and is exact for every
distribution. Heavy-tailed normal scores (lognormal σ = 1) break the exponential model:
28–41 % of calibrations exceed the 1 % target, with a mean FRR of 0.9–1.4 %. Collect more
normals (≥ 230 for a guarantee) when the normal scores look heavy-tailed.

Pixel threshold
---------------

Pixels of one map are strongly correlated (the map is an upsampled 15×15 grid, smoothed),
so the H·W pixels of n images are nowhere near n·H·W independent draws, and a pooled pixel
quantile has no honest confidence. The independent unit is the image: we reduce every
normal map to one number, its per-image q-quantile sᵢ = Q_q(mapᵢ) (default q = 1: the
maximum), and apply the same estimator to s₁…sₙ. Then t_px ≥ Q_q(map) of a fresh normal
image with probability ≥ 1 − α, i.e. its mask flags at most a fraction 1 − q of its pixels
(q = 1: the mask is empty) for all but α of normal images. q < 1 (e.g. 0.999) tolerates a
few hot pixels per normal image and gives a lower, more sensitive threshold.

Leave-one-out
-------------

Bank-based modes score an image against references; a normal that is its own reference
scores too low. The caller then computes the normal scores and maps leave-one-out and
passes them in (``leave_one_out=True`` only records this in ``inputs``); the estimators
treat them as fresh normal scores.

Review band
-----------

Every threshold has two bounds: t_r (review) ≤ t_d (defect). With n known-good scores,
t_d is the estimator above and t_r the order statistic x₍ₖ₎ with k = min(n, ⌈(n + 1)(1 − ρ)⌉),
ρ = 5 %: for exchangeable scores a fresh normal image exceeds x₍ₖ₎ with probability exactly
(n + 1 − k)/(n + 1) (20 % with 4 normals, 5 % from 19 on), whatever the distribution. The
review band catches what the strict bound lets pass; a person looks at it.

Unsupervised rule
-----------------

Without known-good images, both bounds come from the unlabeled set itself
(:mod:`anoclip.decide.unlabeled`): its half-sample mode c and the spread σ_L of the scores
below it give t_r = c + 1.75σ_L and t_d = c + 4σ_L. The pixel bounds apply the same rule to the
per-image q-quantiles of the maps. Such thresholds are flagged ``unsupervised`` everywhere
they are shown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats

from anoclip.decide.unlabeled import DEFECT_K, REVIEW_K, set_bounds
from anoclip.errors import CalibrationError
from anoclip.threshold import Threshold, anoclip_version, image_level

DEFAULT_FALSE_REJECT = 0.01
DEFAULT_CONFIDENCE = 0.9
REVIEW_RATE = 0.05  # ρ: the known-good review bound's rate, see 'Review band'
MIN_NORMALS = 2

MapInput = np.ndarray | str | os.PathLike


# ---------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------


def order_statistic_rank(n: int, false_reject: float, confidence: float) -> int | None:
    """Smallest rank k (1-based) with P(Binomial(n, 1 − α) ≤ k − 1) ≥ γ, or None if k > n.

    x₍ₖ₎ is then a distribution-free γ upper confidence bound of the (1 − α) quantile.
    """
    _check_levels(false_reject, confidence)
    k = int(stats.binom.ppf(confidence, n, 1.0 - false_reject)) + 1
    # ppf is the smallest j with cdf(j) ≥ γ, up to floating point; step to be exact
    while k > 1 and stats.binom.cdf(k - 2, n, 1.0 - false_reject) >= confidence:
        k -= 1
    while k <= n and stats.binom.cdf(k - 1, n, 1.0 - false_reject) < confidence:
        k += 1
    return k if k <= n else None


def exponential_tail_bound(scores: np.ndarray, false_reject: float, confidence: float) -> float:
    """t = max(u + β⁺·ln(p_u/α), x₍ₙ₎) from an exponential fit to the top m = ⌈n/2⌉ scores.

    u = x₍ₙ₋ₘ₎, β̂ = mean(x₍ᵢ₎ − u) over the top m, β⁺ = 2mβ̂ / χ²_{1−γ}(2m),
    p_u = (m + 1)/(n + 1). See the module docstring.
    """
    x = np.sort(np.asarray(scores, dtype=np.float64))
    n = x.size
    m = math.ceil(n / 2)
    u = x[n - m - 1]
    beta_hat = float(np.mean(x[n - m :] - u))
    beta_up = 2 * m * beta_hat / _chi2_lower(2 * m, confidence)
    p_u = (m + 1) / (n + 1)
    return float(max(u + beta_up * math.log(p_u / false_reject), x[-1]))


@lru_cache(maxsize=256)
def _chi2_lower(df: int, confidence: float) -> float:
    """χ²_{1−γ}(df): the (1 − γ) quantile of a chi-squared distribution."""
    return float(stats.chi2.ppf(1.0 - confidence, df))


def upper_quantile_bound(
    scores: Iterable[float],
    false_reject: float = DEFAULT_FALSE_REJECT,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[float, str]:
    """(t, estimator): a γ upper confidence bound of the (1 − α) quantile of `scores`.

    The order statistic x₍ₖ₎ when k ≤ n ("order-statistic"), else the exponential-tail
    bound ("exponential-tail").
    """
    x = _finite_array(scores, "normal scores")
    if x.size < MIN_NORMALS:
        raise CalibrationError(
            f"need at least {MIN_NORMALS} known-good images to set a threshold, got {x.size}"
        )
    _check_levels(false_reject, confidence)
    k = order_statistic_rank(x.size, false_reject, confidence)
    if k is not None:
        return float(np.sort(x)[k - 1]), "order-statistic"
    return exponential_tail_bound(x, false_reject, confidence), "exponential-tail"


def image_threshold(
    normal_scores: Iterable[float],
    false_reject: float = DEFAULT_FALSE_REJECT,
    confidence: float = DEFAULT_CONFIDENCE,
) -> float:
    """Image threshold t with P(score of a fresh normal > t) ≤ α, at confidence γ."""
    return upper_quantile_bound(normal_scores, false_reject, confidence)[0]


def per_image_statistic(maps: Iterable[MapInput], quantile: float = 1.0) -> np.ndarray:
    """sᵢ = Q_q(mapᵢ) for each map (q = 1: the maximum); maps may be arrays or .npy paths."""
    if not 0.0 < quantile <= 1.0:
        raise CalibrationError(f"pixel quantile must be in (0, 1], got {quantile}")
    out = []
    for item in maps:
        values = _load_map(item)
        out.append(values.max() if quantile == 1.0 else np.quantile(values, quantile))
    return np.asarray(out, dtype=np.float64)


def pixel_threshold(
    normal_maps: Iterable[MapInput],
    false_reject: float = DEFAULT_FALSE_REJECT,
    confidence: float = DEFAULT_CONFIDENCE,
    quantile: float = 1.0,
) -> float:
    """Pixel threshold: the image estimator applied to the per-image q-quantiles of the maps.

    A fresh normal image then has at most a fraction 1 − q of its pixels above it, except
    with probability α (confidence γ).
    """
    stat = per_image_statistic(normal_maps, quantile)
    return upper_quantile_bound(stat, false_reject, confidence)[0]


# ---------------------------------------------------------------------------------------
# The threshold record
# ---------------------------------------------------------------------------------------


def calibrate_normal(
    normal_scores: Iterable[float],
    normal_maps: Iterable[MapInput] | None = None,
    *,
    false_reject: float = DEFAULT_FALSE_REJECT,
    confidence: float = DEFAULT_CONFIDENCE,
    pixel_quantile: float = 1.0,
    leave_one_out: bool = False,
    settings: Mapping[str, Any] | None = None,
) -> Threshold:
    """Threshold from known-good images (scores, and maps for the pixel bounds):
    t_d = :func:`upper_quantile_bound`, t_r = :func:`review_bound` (module doc)."""
    x = _finite_array(normal_scores, "normal scores")
    t_img, est = upper_quantile_bound(x, false_reject, confidence)
    inputs: dict[str, Any] = {
        "false_reject": false_reject,
        "confidence": confidence,
        "n_normal": int(x.size),
        "estimator": est,
        "review_rate": review_rate(x.size),
        "leave_one_out": leave_one_out,
        "normal_scores": [float(v) for v in x],  # what the report's histogram shows
    }
    pixel: dict[str, float] = {}
    if normal_maps is not None:
        stat = per_image_statistic(normal_maps, pixel_quantile)
        t_px, px_est = upper_quantile_bound(stat, false_reject, confidence)
        pixel = {"pixel_threshold": t_px, "pixel_review": review_bound(stat),
                 "pixel_typical": float(np.median(stat))}  # fmt: skip
        inputs.update(n_maps=int(stat.size), pixel_quantile=pixel_quantile, pixel_estimator=px_est)
    return Threshold("normal", t_img, inputs=inputs, anoclip_version=anoclip_version(),
                     settings=dict(settings or {}), review_threshold=review_bound(x),
                     **pixel)  # fmt: skip


def review_bound(normal_scores: np.ndarray) -> float:
    """x₍ₖ₎, k = min(n, ⌈(n + 1)(1 − ρ)⌉): a fresh normal exceeds it with probability
    :func:`review_rate` (exchangeable scores, any distribution)."""
    x = np.sort(np.asarray(normal_scores, dtype=np.float64))
    k = min(x.size, math.ceil((x.size + 1) * (1 - REVIEW_RATE) - 1e-9))
    return float(x[k - 1])


def review_rate(n: int) -> float:
    """(n + 1 − k)/(n + 1): the share of good parts the known-good review bound flags."""
    k = min(n, math.ceil((n + 1) * (1 - REVIEW_RATE) - 1e-9))
    return (n + 1 - k) / (n + 1)


def calibrate_unsupervised(
    scores: Iterable[float],
    maps: Iterable[MapInput] | None = None,
    *,
    k: float = DEFECT_K,
    review_k: float = REVIEW_K,
    pixel_quantile: float = 1.0,
    settings: Mapping[str, Any] | None = None,
) -> Threshold:
    """Threshold from the unlabeled set's own scores (:mod:`anoclip.decide.unlabeled`):
    t_r = c + review_k·σ_L, t_d = c + k·σ_L, and the same over the maps' statistics."""
    x = _finite_array(scores, "scores")
    c, t_r, t_d = set_bounds(x, review_k, k)
    inputs: dict[str, Any] = {
        "rule": "half-sample mode c + k * left spread",
        "k": k,
        "review_k": review_k,
        "n_images": int(x.size),
        "centre": c,
        "spread": (t_d - c) / k,
    }
    pixel: dict[str, float] = {}
    if maps is not None:
        stat = per_image_statistic(maps, pixel_quantile)
        c_px, r_px, d_px = set_bounds(stat, review_k, k)
        pixel = {"pixel_threshold": d_px, "pixel_review": r_px, "pixel_typical": c_px}
        inputs.update(n_maps=int(stat.size), pixel_quantile=pixel_quantile)
    return Threshold("unsupervised", t_d, inputs=inputs, anoclip_version=anoclip_version(),
                     settings=dict(settings or {}), review_threshold=t_r, **pixel)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------


def mask(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Binary defect mask: map > t_px (bool, same shape as the map)."""
    return np.asarray(anomaly_map) > pixel_threshold


# ---------------------------------------------------------------------------------------
# Metrics against labels (for `anoclip evaluate`)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Confusion counts of binary decisions (positive = defect) and the rates they give.

    precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN),
    false-reject rate = FP/(FP+TN); each is 0 when its denominator is 0.
    """

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return _div(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _div(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _div(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def false_reject_rate(self) -> float:
        return _div(self.fp, self.fp + self.tn)

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def as_dict(self) -> dict[str, float]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "false_reject_rate": self.false_reject_rate,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


def confusion(labels: np.ndarray, predicted: np.ndarray) -> Counts:
    """Counts of bool `predicted` against bool `labels` (True = defect)."""
    y = np.asarray(labels, dtype=bool).ravel()
    p = np.asarray(predicted, dtype=bool).ravel()
    if y.shape != p.shape:
        raise CalibrationError(f"{y.size} labels but {p.size} predictions")
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(~y & p))
    fn = int(np.count_nonzero(y & ~p))
    return Counts(tp, fp, fn, y.size - tp - fp - fn)


def image_metrics(
    labels: Iterable[bool], scores: Iterable[float], threshold: float | Threshold
) -> Counts:
    """Image-level counts of the decisions score > t against the labels."""
    s = np.asarray(list(scores), dtype=np.float64)
    return confusion(np.asarray(list(labels), dtype=bool), s > image_level(threshold))


def pixel_metrics(
    masks: Iterable[np.ndarray], maps: Iterable[MapInput], pixel_threshold: float
) -> Counts:
    """Pixel-level counts of map > t_px against ground-truth masks, summed over images."""
    total = Counts(0, 0, 0, 0)
    for gt, item in zip(masks, maps, strict=True):
        values = _load_map(item)
        gt = np.asarray(gt)
        if gt.shape != values.shape:
            raise CalibrationError(f"mask of shape {gt.shape} for a map of shape {values.shape}")
        total = total + confusion(gt > 0, values > pixel_threshold)
    return total


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _div(a: int, b: int) -> float:
    return a / b if b else 0.0


def _check_levels(false_reject: float, confidence: float) -> None:
    if not 0.0 < false_reject < 1.0:
        raise CalibrationError(f"false-reject rate must be in (0, 1), got {false_reject}")
    if not 0.0 < confidence < 1.0:
        raise CalibrationError(f"confidence must be in (0, 1), got {confidence}")


def _finite_array(values: Iterable[float], what: str) -> np.ndarray:
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, np.float64)
    x = x.ravel()
    if not np.all(np.isfinite(x)):
        raise CalibrationError(f"{what} contain {int(np.sum(~np.isfinite(x)))} non-finite values")
    return x


def _load_map(item: MapInput) -> np.ndarray:
    values = np.load(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
    if values.size == 0:
        raise CalibrationError("empty anomaly map")
    if not np.all(np.isfinite(values)):
        raise CalibrationError("anomaly map with non-finite values")
    return values
