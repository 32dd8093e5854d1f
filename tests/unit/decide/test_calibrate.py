"""Label-free thresholds against independent references: hand-computed cases, exact
binomial sums, Monte Carlo coverage, scipy's MAD, and scikit-learn's metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

from anoclip import threshold as rule
from anoclip.decide import calibrate
from anoclip.errors import AnoclipError, CalibrationError, ThresholdFileError
from anoclip.threshold import Threshold

# ---- order statistic -------------------------------------------------------------------


def _rank_by_hand(n: int, alpha: float, gamma: float) -> int | None:
    """Smallest k with Σ_{j<k} C(n,j)(1−α)^j α^(n−j) ≥ γ, summed exactly."""
    p = 1 - alpha
    cdf = 0.0
    for k in range(1, n + 1):
        cdf += math.comb(n, k - 1) * p ** (k - 1) * alpha ** (n - k + 1)
        if cdf >= gamma:
            return k
    return None


@pytest.mark.parametrize(
    ("n", "alpha", "gamma"),
    [(10, 0.2, 0.9), (59, 0.05, 0.95), (100, 0.05, 0.9), (300, 0.01, 0.9), (500, 0.02, 0.8)],
)
def test_order_statistic_rank_matches_binomial_sum(n, alpha, gamma):
    assert calibrate.order_statistic_rank(n, alpha, gamma) == _rank_by_hand(n, alpha, gamma)


def test_order_statistic_needs_enough_normals():
    # the maximum is a 90 % bound of the 99 % quantile iff 1 − 0.99^n ≥ 0.9  ⟺  n ≥ 230
    assert 1 - 0.99**229 < 0.9 <= 1 - 0.99**230
    assert calibrate.order_statistic_rank(229, 0.01, 0.9) is None
    assert calibrate.order_statistic_rank(230, 0.01, 0.9) == 230
    # 5 %: 1 − 0.95^44 = 0.8953, 1 − 0.95^45 = 0.9006
    assert calibrate.order_statistic_rank(44, 0.05, 0.9) is None
    assert calibrate.order_statistic_rank(45, 0.05, 0.9) == 45


def test_order_statistic_threshold_is_that_sorted_score():
    x = np.random.default_rng(0).normal(size=400)
    k = _rank_by_hand(400, 0.01, 0.9)
    t, est = calibrate.upper_quantile_bound(x, 0.01, 0.9)
    assert est == "order-statistic"
    assert t == np.sort(x)[k - 1]


def test_order_statistic_coverage_monte_carlo():
    """P(achieved FRR ≤ α) ≥ γ for any continuous distribution (here uniform, exact sf)."""
    rng = np.random.default_rng(1)
    frr = [1 - calibrate.image_threshold(rng.random(300), 0.01, 0.9) for _ in range(1500)]
    covered = np.mean(np.asarray(frr) <= 0.01)
    gamma_exact = stats.binom.cdf(_rank_by_hand(300, 0.01, 0.9) - 1, 300, 0.99)
    assert covered == pytest.approx(gamma_exact, abs=4 * math.sqrt(0.1 * 0.9 / 1500))


# ---- exponential tail ------------------------------------------------------------------


def test_exponential_tail_hand_computed():
    # n = 5, m = 3, u = x(2) = 2, exceedances 1, 2, 3 -> β̂ = 2
    # χ²_0.10(6) = 2.2041 (printed tables), β⁺ = 6·2/2.2041 = 5.4444
    # p_u = 4/6, t = 2 + 5.4444·ln((4/6)/0.01) = 2 + 5.4444·4.1997 = 24.865
    t, est = calibrate.upper_quantile_bound([3, 1, 5, 2, 4], 0.01, 0.9)
    assert est == "exponential-tail"
    assert t == pytest.approx(2 + 12 / 2.20413 * math.log(400 / 6), abs=2e-3)
    assert t == pytest.approx(24.865, abs=5e-3)


def test_exponential_tail_never_below_the_largest_normal():
    # α = 0.3: u = 0, β̂ = 10/3, β⁺ = 20/2.20413 = 9.074, ln((4/6)/0.3) = 0.799 -> 7.25 < 10
    assert calibrate.image_threshold([0, 0, 0, 0, 10], 0.3, 0.9) == 10.0


def test_constant_scores_give_that_score():
    assert calibrate.image_threshold([0.4] * 6) == pytest.approx(0.4)
    assert rule.decide(0.4, 0.4) == "ok"


def test_location_and_scale_invariant():
    x = np.random.default_rng(2).gamma(2.0, size=12)
    t = calibrate.image_threshold(x)
    assert calibrate.image_threshold(3.0 + 0.25 * x) == pytest.approx(3.0 + 0.25 * t)


@pytest.mark.parametrize("n", [5, 20])
@pytest.mark.parametrize(
    ("dist", "limit"),
    [(stats.expon(), 0.1), (stats.norm(), 0.1), (stats.lognorm(0.5), 0.1)],
)
def test_exponential_tail_coverage(n, dist, limit):
    """Achieved FRR (exact, 1 − F(t)) exceeds 1 % in at most ~10 % of calibrations."""
    rng = np.random.default_rng(3)
    reps = 1500
    frr = np.array(
        [dist.sf(calibrate.image_threshold(dist.rvs(n, random_state=rng))) for _ in range(reps)]
    )
    assert np.mean(frr > 0.01) <= limit + 3 * math.sqrt(limit * (1 - limit) / reps)


def test_more_normals_give_a_tighter_threshold_on_average():
    rng = np.random.default_rng(4)
    q99 = stats.norm.ppf(0.99)
    excess = {
        n: np.median([calibrate.image_threshold(rng.normal(size=n)) - q99 for _ in range(300)])
        for n in (5, 20, 100)
    }
    assert excess[5] > excess[20] > excess[100] > 0


# ---- pixel threshold -------------------------------------------------------------------


def test_pixel_threshold_uses_per_image_maxima():
    rng = np.random.default_rng(5)
    maps = [rng.random((8, 9)).astype(np.float32) + i for i in range(6)]
    maxima = [float(np.max(m)) for m in maps]
    assert calibrate.pixel_threshold(maps) == calibrate.image_threshold(maxima)


def test_pixel_threshold_per_image_quantile(tmp_path):
    rng = np.random.default_rng(6)
    maps = [rng.random((20, 20)) for _ in range(5)]
    paths = []
    for i, m in enumerate(maps):
        np.save(tmp_path / f"{i}.npy", m)
        paths.append(tmp_path / f"{i}.npy")
    q = [float(np.quantile(m, 0.9)) for m in maps]
    assert calibrate.pixel_threshold(paths, quantile=0.9) == calibrate.image_threshold(q)
    # a fresh normal map below the threshold at its 0.9 quantile has ≤ 10 % flagged pixels
    t = calibrate.pixel_threshold(maps, quantile=0.9)
    assert calibrate.mask(maps[0], t).mean() <= 0.1


# ---- unsupervised ----------------------------------------------------------------------


def test_unsupervised_ignores_a_minority_of_outliers():
    rng = np.random.default_rng(8)
    normal = rng.normal(0.3, 0.01, 80)
    t = calibrate.calibrate_unsupervised(np.r_[normal, rng.normal(0.6, 0.02, 20)])
    assert t.method == "unsupervised" and t.unsupervised
    assert 0.3 < t.image_threshold < 0.4


# ---- the record ------------------------------------------------------------------------


def test_calibrate_normal_records_its_inputs():
    rng = np.random.default_rng(10)
    maps = [rng.random((5, 5)) for _ in range(4)]
    t = calibrate.calibrate_normal(
        [0.1, 0.2, 0.3, 0.25], maps, false_reject=0.05, leave_one_out=True, settings={"a": 1}
    )
    assert t.method == "normal" and not t.unsupervised
    assert t.image_threshold == calibrate.image_threshold([0.1, 0.2, 0.3, 0.25], 0.05)
    assert t.inputs["n_normal"] == 4 and t.inputs["n_maps"] == 4
    assert t.inputs["false_reject"] == 0.05 and t.inputs["leave_one_out"] is True
    assert t.inputs["estimator"] == "exponential-tail"
    assert t.settings == {"a": 1}
    assert type(t.image_threshold) is float and type(t.pixel_threshold) is float


def test_json_round_trip(tmp_path):
    t = Threshold("normal", 0.61, 0.7, {"n_normal": 4}, "0.1.0", {"model": "m", "layers": (3, 6)})
    path = t.to_json(tmp_path / "threshold.json")
    back = Threshold.from_json(path, settings={"model": "m", "layers": [3, 6]})
    assert back.image_threshold == 0.61 and back.pixel_threshold == 0.7
    assert back.method == "normal" and back.inputs == {"n_normal": 4}
    assert back.anoclip_version == "0.1.0"
    assert json.loads(path.read_text())["format"] == "anoclip-threshold"


def test_json_without_pixel_threshold(tmp_path):
    t = Threshold("unsupervised", 2.0, None, {}, "x", {})
    assert Threshold.from_json(t.to_json(tmp_path / "t.json")).pixel_threshold is None


@pytest.mark.parametrize(
    "content",
    [
        "not json {",
        "[1, 2]",
        '{"format": "something-else"}',
        '{"format": "anoclip-threshold", "format_version": 1, "method": "normal"}',
        '{"format": "anoclip-threshold", "format_version": 1, "method": "magic", '
        '"image_threshold": 1}',
        '{"format": "anoclip-threshold", "format_version": 1, "method": "normal", '
        '"image_threshold": NaN}',
        '{"format": "anoclip-threshold", "format_version": 1, "method": "normal", '
        '"image_threshold": "0.5"}',
        '{"format": "anoclip-threshold", "format_version": 3, "method": "normal", '
        '"image_threshold": 0.5}',
        '{"format": "anoclip-threshold", "format_version": 1, "method": "normal", '
        '"image_threshold": 0.5, "pixel_threshold": "x"}',
    ],
)
def test_malformed_file_is_a_one_line_user_error(tmp_path, content):
    path = tmp_path / "t.json"
    path.write_text(content)
    with pytest.raises(ThresholdFileError) as info:
        Threshold.from_json(path)
    assert isinstance(info.value, AnoclipError)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(ThresholdFileError, match="cannot read"):
        Threshold.from_json(tmp_path / "absent.json")


def test_mismatched_settings_are_refused(tmp_path):
    path = Threshold("normal", 0.5, None, {}, "0.1.0", {"model": "a", "tta": True}).to_json(
        tmp_path / "t.json"
    )
    with pytest.raises(ThresholdFileError, match="model") as info:
        Threshold.from_json(path, settings={"model": "b", "tta": True})
    assert "\n" not in str(info.value)
    with pytest.raises(ThresholdFileError, match="seed"):
        Threshold.from_json(path, settings={"model": "a", "tta": True, "seed": 1})


# ---- decisions -------------------------------------------------------------------------


def test_review_band_decides_three_ways():
    t = Threshold("normal", 0.5, 0.6, review_threshold=0.3, pixel_review=0.4)
    assert [rule.decide(s, t) for s in (0.2, 0.3, 0.31, 0.5, 0.51)] == [
        "ok", "ok", "review", "review", "defect",
    ]  # fmt: skip
    m = np.array([[0.1, 0.45], [0.5, 0.65]])
    assert rule.defect_mask(m, "ok", t).tolist() == [[False, False], [False, True]]
    assert rule.defect_mask(m, "review", t).tolist() == [[False, True], [True, True]]
    quiet = np.array([[0.1, 0.2], [0.3, 0.35]])  # nothing over t_px_r: the hot spot,
    # median 0.25, rise 0.1 -> map ≥ 0.32
    assert rule.defect_mask(quiet, "defect", t).tolist() == [[False, False], [False, True]]
    flat = np.full((3, 3), 0.06)
    flat[1, 1] = 0.07  # a visual-only map: low everywhere, one hot patch (not the whole image)
    assert rule.defect_mask(flat, "review", t).sum() == 1
    assert rule.defect_mask(m, "review", Threshold("normal", 0.5)) is None
    with pytest.raises(CalibrationError):
        Threshold("normal", 0.5, review_threshold=0.6)


def test_version_1_files_still_read(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"format": "anoclip-threshold", "format_version": 1,
                                "method": "normal", "image_threshold": 0.5,
                                "pixel_threshold": 0.7}))  # fmt: skip
    t = Threshold.from_json(path)
    assert t.review_threshold is None and rule.decide(0.49, t) == "ok"


@pytest.mark.parametrize(("n", "k", "rate"), [(4, 4, 1 / 5), (19, 19, 1 / 20), (99, 95, 5 / 100)])
def test_known_good_review_bound_is_an_order_statistic(n, k, rate):
    """x₍ₖ₎ with k = min(n, ⌈(n+1)·0.95⌉); a fresh exchangeable normal exceeds it with
    probability (n + 1 − k)/(n + 1), checked by simulation."""
    x = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))
    assert calibrate.review_bound(x) == k and calibrate.review_rate(n) == pytest.approx(rate)
    rng = np.random.default_rng(0)
    draws = rng.lognormal(size=(20000, n + 1))
    fresh_above = [d[-1] > calibrate.review_bound(d[:-1]) for d in draws]
    assert np.mean(fresh_above) == pytest.approx(rate, abs=0.01)


def test_decide_ratio_mask():
    t = Threshold("normal", 0.5, 0.6)
    assert rule.decide(0.51, t) == "defect"
    assert rule.decide(0.5, t) == "ok"
    assert rule.decide(0.2, 0.5) == "ok"
    assert rule.ratio(0.75, t) == pytest.approx(1.5)
    assert math.isnan(rule.ratio(0.3, 0.0))
    m = calibrate.mask(np.array([[0.5, 0.6], [0.61, 0.9]]), t.pixel_threshold)
    assert m.dtype == bool and m.tolist() == [[False, False], [True, True]]
    with pytest.raises(CalibrationError):
        rule.decide(float("nan"), t)


@pytest.mark.parametrize(
    "call",
    [
        lambda: calibrate.image_threshold([0.3]),
        lambda: calibrate.image_threshold([0.3, float("nan"), 0.4]),
        lambda: calibrate.image_threshold([0.1, 0.2, 0.3], false_reject=0.0),
        lambda: calibrate.image_threshold([0.1, 0.2, 0.3], confidence=1.0),
        lambda: calibrate.pixel_threshold([np.zeros((2, 2))] * 3, quantile=0.0),
        lambda: calibrate.calibrate_unsupervised([1.0, 2.0]),
    ],
)
def test_bad_inputs_are_user_errors(call):
    with pytest.raises(CalibrationError) as info:
        call()
    assert isinstance(info.value, AnoclipError) and "\n" not in str(info.value)


# ---- metrics against labels ------------------------------------------------------------


@pytest.fixture(params=[0, 1])
def labelled(request):
    rng = np.random.default_rng(request.param)
    y = rng.random(300) < 0.4
    s = rng.random(300) + 0.5 * y
    return y, s


def test_image_metrics_match_sklearn(labelled):
    y, s = labelled
    c = calibrate.image_metrics(y, s, 0.8)
    p = s > 0.8
    assert c.precision == pytest.approx(precision_score(y, p, zero_division=0))
    assert c.recall == pytest.approx(recall_score(y, p, zero_division=0))
    assert c.f1 == pytest.approx(f1_score(y, p, zero_division=0))
    tn, fp, fn, tp = confusion_matrix(y, p, labels=[False, True]).ravel()
    assert (c.tp, c.fp, c.fn, c.tn) == (tp, fp, fn, tn)
    assert c.false_reject_rate == pytest.approx(fp / (fp + tn))


def test_metrics_with_no_predicted_defects_follow_sklearn_zero_division():
    y = np.array([True, False, True])
    c = calibrate.image_metrics(y, [0.1, 0.2, 0.3], 1.0)
    p = np.zeros(3, bool)
    assert c.precision == precision_score(y, p, zero_division=0) == 0.0
    assert c.f1 == f1_score(y, p, zero_division=0) == 0.0


def test_pixel_metrics_match_sklearn_over_all_pixels():
    rng = np.random.default_rng(11)
    masks = [rng.random((12, 10)) < 0.2 for _ in range(4)]
    maps = [rng.random((12, 10)) + 0.4 * m for m in masks]
    c = calibrate.pixel_metrics(masks, maps, 0.9)
    y = np.concatenate([m.ravel() for m in masks])
    p = np.concatenate([m.ravel() > 0.9 for m in maps])
    assert c.precision == pytest.approx(precision_score(y, p))
    assert c.recall == pytest.approx(recall_score(y, p))
    assert c.f1 == pytest.approx(f1_score(y, p))
    assert c.tp + c.fp + c.fn + c.tn == y.size


def test_pixel_metrics_refuse_mismatched_shapes():
    with pytest.raises(CalibrationError, match="shape"):
        calibrate.pixel_metrics([np.zeros((3, 3))], [np.zeros((4, 4))], 0.5)
