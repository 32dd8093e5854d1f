"""The unlabeled-set bounds against independent references: a brute-force half-sample mode,
hand-computed cases, and Gaussian populations with a defect-heavy or a rare contamination."""

from __future__ import annotations

import numpy as np
import pytest

from anoclip.decide import calibrate, unlabeled
from anoclip.errors import CalibrationError


def brute_hsm(x: np.ndarray) -> float:
    """Half-sample mode by trying every window of every step (no argmin shortcuts)."""
    x = sorted(float(v) for v in x)
    while len(x) > 3:
        h = (len(x) + 1) // 2
        best = min(range(len(x) - h + 1), key=lambda i: (x[i + h - 1] - x[i], i))
        x = x[best : best + h]
    if len(x) == 3:
        pairs = [(x[1] - x[0], x[:2]), (x[2] - x[1], x[1:])]
        (d0, a), (d1, b) = pairs
        x = a if d0 < d1 else b if d1 < d0 else [x[1]]
    return sum(x) / len(x)


def test_hand_computed_mode_and_bounds():
    # [1, 2, 3, 3.1, 3.2, 9, 10], h = 4: windows 1..3.1 (2.1), 2..3.2 (1.2), 3..9 (6),
    # 3.1..10 (6.9) -> [2, 3, 3.1, 3.2];
    # h = 2: 2..3 (1), 3..3.1 (0.1), 3.1..3.2 (0.1) -> first: [3, 3.1] -> mode 3.05
    x = [1, 2, 3, 3.1, 3.2, 9, 10]
    assert unlabeled.half_sample_mode(x) == pytest.approx(3.05)
    below = np.array([1, 2, 3]) - 3.05
    sigma = np.sqrt(np.mean(below**2))
    c, t_r, t_d = unlabeled.set_bounds(x)
    assert (c, t_r, t_d) == pytest.approx((3.05, 3.05 + 1.75 * sigma, 3.05 + 4 * sigma))


@pytest.mark.parametrize("seed", range(20))
def test_mode_matches_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    x = np.r_[rng.normal(0, 1, rng.integers(3, 40)), rng.normal(4, 1, rng.integers(0, 20))]
    assert unlabeled.half_sample_mode(x) == pytest.approx(brute_hsm(x))


@pytest.mark.parametrize(("defects", "n_normal"), [(40, 60), (6, 60), (0, 60)])
def test_bounds_stay_on_the_normal_population(defects, n_normal):
    """Normals N(0.3, 0.01) with a defect-heavy, rare or absent contamination above them:
    t_r ≈ 0.3 + 1.75·0.01 and t_d ≈ 0.3 + 4·0.01 in every case (median + MAD would not)."""
    rng = np.random.default_rng(defects)
    runs = []
    for _ in range(200):
        x = np.r_[rng.normal(0.3, 0.01, n_normal), rng.uniform(0.33, 0.6, defects)]
        runs.append(unlabeled.set_bounds(x)[1:])
    t_r, t_d = np.median(runs, axis=0)
    assert t_r == pytest.approx(0.3175, abs=0.005) and t_d == pytest.approx(0.34, abs=0.008)


def test_ties_fall_back_to_the_mad_then_to_zero():
    c, t_r, t_d = unlabeled.set_bounds([5, 5, 5, 5, 9])
    assert (c, t_r, t_d) == (5, 5, 5)  # MAD 0: every score above 5 is a defect
    x = [1, 1, 1, 2, 3, 4, 5]
    c, t_r, _ = unlabeled.set_bounds(x)
    assert c == 1 and t_r == pytest.approx(1 + 1.75 * 1.4826 * 1.0)


def test_unsupervised_threshold_has_both_bounds_and_pixel_bounds():
    rng = np.random.default_rng(9)
    maps = [rng.random((6, 6)) * 0.1 for _ in range(9)] + [np.full((6, 6), 0.9)]
    scores = np.r_[rng.normal(0.2, 0.01, 9), 0.9]
    t = calibrate.calibrate_unsupervised(scores, maps)
    assert t.unsupervised and t.review_threshold < t.image_threshold < 0.9
    maxima = [m.max() for m in maps]
    c, r, d = unlabeled.set_bounds(maxima)
    assert (t.pixel_typical, t.pixel_review, t.pixel_threshold) == pytest.approx((c, r, d))
    assert t.inputs["n_maps"] == 10


@pytest.mark.parametrize(
    "call",
    [lambda: unlabeled.set_bounds([1.0, 2.0]), lambda: unlabeled.set_bounds([1, 2, 3], 3, 2)],
)
def test_refusals_are_one_line(call):
    with pytest.raises(CalibrationError) as info:
        call()
    assert "\n" not in str(info.value)


def test_brute_reference_is_itself_right():
    # [0, 0.1, 5, 5.05, 9]: h = 3, windows 0..5 (5), 0.1..5.05 (4.95), 5..9 (4) -> [5, 5.05, 9];
    # then the pairs 0.05 < 3.95 -> [5, 5.05] -> 5.025
    assert brute_hsm(np.array([0, 0.1, 5, 5.05, 9])) == pytest.approx(5.025)
