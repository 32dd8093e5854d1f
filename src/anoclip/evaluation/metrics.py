"""The papers' metrics (METHOD.md §6), computed per category.

Image and pixel AUROC, AP and F1-max share one exact threshold sweep over the distinct
score values (O(n log n), float32 scores, bool labels). AUPRO follows the official code and
MuSc convention: 200 thresholds between the category's min and max map value, PRO over
8-connected ground-truth regions, FPR over all normal pixels, points with FPR < 0.3
rescaled to [0, 1] and integrated with the trapezoid rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

NAMES = (
    "image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro",
)  # fmt: skip


@dataclass
class Metrics:
    """One category's metrics, each in [0, 1] (NaN when undefined, e.g. no masks)."""

    image_auroc: float
    image_ap: float
    image_f1max: float
    pixel_auroc: float
    pixel_ap: float
    pixel_f1max: float
    aupro: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct score, descending."""
    y = np.asarray(labels).ravel().astype(bool)
    s = np.asarray(scores).ravel()
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last index of each distinct score
    tps = np.cumsum(y, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return tps, fps


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half, like scikit-learn)."""
    tps, fps = _curve(labels, scores)
    if tps[-1] == 0 or fps[-1] == 0:
        return float("nan")
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _precision_recall(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    tps, fps = _curve(labels, scores)
    if tps[-1] == 0:
        return np.array([np.nan]), np.array([np.nan])
    return tps / (tps + fps), tps / tps[-1]


def average_precision(labels: np.ndarray, scores: np.ndarray, mode: str = "step") -> float:
    """AP: "step" Σ (R_n − R_{n−1}) P_n (scikit-learn); "trapezoid" the official code's
    area under (recall, precision) with the (0, 1) end point."""
    precision, recall = _precision_recall(labels, scores)
    if np.isnan(recall[0]):
        return float("nan")
    if mode == "step":
        return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    if mode == "trapezoid":
        r, p = np.r_[0.0, recall], np.r_[1.0, precision]
        return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2))
    raise ValueError(f"unknown AP mode {mode!r}")


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Maximum of 2PR/(P+R) over all thresholds (an oracle metric, not a threshold)."""
    precision, recall = _precision_recall(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    f1 = f1[np.isfinite(f1)]
    return float(f1.max()) if f1.size else float("nan")


def aupro(
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    fpr_limit: float = 0.3,
    steps: int = 200,
) -> float:
    """AUPRO up to `fpr_limit` for bool masks and float maps (`[N, H, W]` arrays or lists of
    `[H_i, W_i]` arrays, one per image)."""
    masks = [np.asarray(m, dtype=bool) for m in masks]
    maps = [np.asarray(m) for m in maps]
    if not any(m.any() for m in masks) or all(m.all() for m in masks):
        return float("nan")
    lo, hi = min(m.min() for m in maps), max(m.max() for m in maps)
    if hi <= lo:
        return float("nan")
    # AnoVL's grid: np.arange in the maps' own dtype (float32 thresholds for float32 maps)
    thresholds = np.arange(lo, hi, (hi - lo) / steps)
    # bin[i] = number of thresholds strictly below the value: pixel counts as detected
    # (value > th_k) exactly for k < bin
    k = thresholds.size

    def above_counts(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
        bins = np.searchsorted(thresholds, values, side="left")
        hist = np.bincount(groups * (k + 1) + bins, minlength=n_groups * (k + 1))
        hist = hist.reshape(n_groups, k + 1)
        # count above th_k = Σ_{b > k} hist[b]
        return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]

    structure = np.ones((3, 3), dtype=int)
    region_values, region_ids, offset = [], [], 0
    for mask, amap in zip(masks, maps):
        labelled, n = ndimage.label(mask, structure=structure)
        if n:
            sel = labelled > 0
            region_values.append(amap[sel])
            region_ids.append(labelled[sel] - 1 + offset)
            offset += n
    values, ids = np.concatenate(region_values), np.concatenate(region_ids)
    areas = np.bincount(ids, minlength=offset)
    pro = (above_counts(values, ids, offset) / areas[:, None]).mean(axis=0)
    normal = np.concatenate([amap[~mask] for mask, amap in zip(masks, maps)])
    fpr = above_counts(normal, np.zeros(normal.size, dtype=np.int64), 1)[0] / normal.size
    keep = fpr < fpr_limit
    if keep.sum() < 2:
        return float("nan")
    f, p = fpr[keep], pro[keep]
    span = f.max() - f.min()
    if span <= 0:
        return float("nan")
    f = (f - f.min()) / span
    # threshold order: FPR never increases, so this is the official code's auc(fpr, pro)
    return float(np.sum(-np.diff(f) * (p[1:] + p[:-1]) / 2))


def compute(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: Sequence[np.ndarray] | None,
    maps: Sequence[np.ndarray] | None,
    ap_mode: str = "step",
) -> Metrics:
    """All metrics of one category. masks/maps: `[N, H, W]` or per-image lists; None
    skips the pixel metrics."""
    nan = float("nan")
    pixel = (nan, nan, nan, nan)
    if masks is not None and maps is not None:
        flat_masks = np.concatenate([np.asarray(m).reshape(-1) for m in masks])
        flat_maps = np.concatenate([np.asarray(m).reshape(-1) for m in maps])
        pixel = (
            auroc(flat_masks, flat_maps),
            average_precision(flat_masks, flat_maps, ap_mode),
            f1_max(flat_masks, flat_maps),
            aupro(masks, maps),
        )
    return Metrics(
        image_auroc=auroc(labels, scores),
        image_ap=average_precision(labels, scores, ap_mode),
        image_f1max=f1_max(labels, scores),
        pixel_auroc=pixel[0],
        pixel_ap=pixel[1],
        pixel_f1max=pixel[2],
        aupro=pixel[3],
    )
