"""Label-free decisions judged against labels: escapes and flagged by brute-force counting."""

from __future__ import annotations

import numpy as np
import pytest

from anoclip.evaluation.protocol import judge
from anoclip.threshold import Threshold


@pytest.mark.parametrize("review", [None, 0.4])
def test_escapes_and_flagged_count_the_three_decisions(review):
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = rng.random(200) * 0.5 + 0.3 * labels
    t = Threshold("unsupervised", 0.6, review_threshold=review)
    rates = judge(t, labels, scores, [], None).rates()
    lower = 0.6 if review is None else review
    escapes = sum(1 for y, s in zip(labels, scores) if y and s <= lower) / labels.sum()
    flagged = sum(1 for y, s in zip(labels, scores) if not y and s > lower) / (~labels).sum()
    assert rates["image_escapes"] == pytest.approx(escapes)
    assert rates["image_flagged"] == pytest.approx(flagged)
    frr = sum(1 for y, s in zip(labels, scores) if not y and s > 0.6) / (~labels).sum()
    assert rates["image_frr"] == pytest.approx(frr)  # of the defect bound alone
