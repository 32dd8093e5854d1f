"""Metrics against independent references: scikit-learn, brute force, and a slow AUPRO
written here from its definition."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from anoclip.evaluation import metrics


@pytest.fixture(params=[0, 1, 2])
def labelled(request):
    rng = np.random.default_rng(request.param)
    y = rng.random(500) < 0.3
    s = rng.random(500) + 0.4 * y
    if request.param == 2:
        s = np.round(s, 1)  # many ties
    return y, s.astype(np.float32)


def test_auroc_matches_sklearn(labelled):
    y, s = labelled
    assert metrics.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_ap_matches_sklearn(labelled):
    y, s = labelled
    assert metrics.average_precision(y, s) == pytest.approx(
        average_precision_score(y, s), abs=1e-12
    )
    p, r, _ = precision_recall_curve(y, s)
    assert metrics.average_precision(y, s, "trapezoid") == pytest.approx(auc(r, p), abs=1e-12)


def test_f1max_matches_brute_force(labelled):
    y, s = labelled
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = np.sum(pred & y)
        if tp:
            precision, recall = tp / pred.sum(), tp / y.sum()
            best = max(best, 2 * precision * recall / (precision + recall))
    assert metrics.f1_max(y, s) == pytest.approx(best, abs=1e-12)


def test_known_cases():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert metrics.auroc(y, s) == 1.0 and metrics.average_precision(y, s) == 1.0
    assert metrics.f1_max(y, s) == 1.0
    assert metrics.auroc(y, -s) == 0.0
    assert np.isnan(metrics.auroc(np.zeros(4), np.arange(4.0)))


def slow_aupro(masks, maps, fpr_limit=0.3, steps=200):
    """The definition, pixel by pixel: 8-connected regions, per-region overlap, FPR over
    normal pixels, FPR < limit kept, rescaled to [0, 1], trapezoid integral."""
    lo, hi = maps.min(), maps.max()
    pros, fprs = [], []
    for th in np.arange(lo, hi, (hi - lo) / steps):
        detected = maps > th
        overlaps = []
        for mask, det in zip(masks, detected):
            labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
            for r in range(1, n + 1):
                region = labelled == r
                overlaps.append(det[region].sum() / region.sum())
        pros.append(np.mean(overlaps))
        fprs.append((detected & ~masks).sum() / (~masks).sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < fpr_limit
    f = fprs[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return auc(f, pros[keep])


def synthetic(seed, n=4, size=24):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    masks[0, 3:8, 3:9] = True
    masks[0, 15:20, 12:14] = True  # two regions in one image
    masks[1, 10:12, 10:22] = True
    masks[2, 2:4, 2:4] = True
    masks[2, 4:6, 4:6] = True  # touches diagonally: one 8-connected region
    maps = ndimage.gaussian_filter(rng.random((n, size, size)), 1.5)
    maps = maps + 0.08 * ndimage.gaussian_filter(masks.astype(float), (0, 1, 1))
    return masks, maps.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_slow_definition(seed):
    masks, maps = synthetic(seed)
    assert metrics.aupro(masks, maps) == pytest.approx(slow_aupro(masks, maps), abs=1e-9)


def test_aupro_known_cases():
    masks, _ = synthetic(0)
    rng = np.random.default_rng(0)
    perfect = np.where(masks, 0.6 + 0.4 * rng.random(masks.shape), 0.4 * rng.random(masks.shape))
    assert metrics.aupro(masks, perfect) == pytest.approx(1.0)
    assert metrics.aupro(masks, 1 - perfect) == pytest.approx(0.0)
    assert np.isnan(metrics.aupro(np.zeros_like(masks), perfect))


def test_compute_bundles_everything():
    masks, maps = synthetic(1)
    labels = masks.reshape(len(masks), -1).any(1).astype(int)
    scores = maps.reshape(len(maps), -1).max(1)
    m = metrics.compute(labels, scores, masks, maps)
    assert m.pixel_auroc == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert m.image_auroc == pytest.approx(roc_auc_score(labels, scores))
    assert list(m.as_dict()) == list(metrics.NAMES)
    no_pixels = metrics.compute(labels, scores, None, None)
    assert np.isnan(no_pixels.pixel_auroc) and np.isnan(no_pixels.aupro)
