"""The global branch (references/global_score.py) against numpy recomputations and
hand-computed cases."""

from __future__ import annotations

import math
import statistics

import numpy as np
import torch

from anoclip.references.global_score import (
    bank_distance,
    fuse,
    image_statistics,
    leave_one_out,
    set_distance,
)


def test_image_statistics_match_numpy():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 7, 2, 3, generator=g)]
    got = image_statistics(maps).double().numpy()
    for i in range(3):
        parts = []
        for m in maps:
            x = m[i].double().numpy().reshape(m.shape[1], -1)
            v = np.concatenate([x.mean(1), x.std(1)])
            parts.append(v / np.linalg.norm(v))
        want = np.concatenate(parts) / math.sqrt(2)
        np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_distances_brute_force():
    g = np.random.default_rng(1)
    u = g.normal(size=(9, 5))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    d = 0.5 * (1 - u @ u.T)
    got = set_distance(torch.tensor(u)).numpy()
    k = math.ceil(0.3 * 8)  # 3 of the 8 others
    for i in range(9):
        others = sorted(d[i, j] for j in range(9) if j != i)
        assert math.isclose(got[i], sum(others[:k]) / k, rel_tol=1e-9, abs_tol=1e-12)
    bank = torch.tensor(u[:4])
    np.testing.assert_allclose(bank_distance(torch.tensor(u[4:]), bank).numpy(),
                               d[4:, :4].min(1), atol=1e-12)  # fmt: skip
    loo = [min(d[i, j] for j in range(4) if j != i) for i in range(4)]
    np.testing.assert_allclose(leave_one_out(bank).numpy(), loo, atol=1e-12)


def test_fused_scale_comes_from_the_calibration():
    # a handful of known-good images: centre = median, spread = sample standard deviation,
    # of the log distances, at least ln 2 / 2
    patch_cal = [0.20, 0.22, 0.25, 0.21]
    glob_cal = [0.010, 0.020, 0.011, 0.040]
    logs = [math.log(x) for x in glob_cal]
    sd_p = statistics.stdev(patch_cal)
    c_g, sd_g = statistics.median(logs), statistics.stdev(logs)
    assert sd_g > math.log(2) / 2  # the floor is not what this case measures
    patch = torch.tensor([0.21, 0.30, 0.22])
    glob = torch.tensor([0.012, 0.013, 0.012 * math.exp(10 * sd_g)], dtype=torch.float64)
    got, changed = fuse(patch, glob, patch_cal, glob_cal, k=4.0)
    z = [(math.log(float(x)) - c_g) / sd_g for x in glob]
    want = [float(p) + sd_p * max(0.0, zz - 4.0) for p, zz in zip(patch, z)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert changed.tolist() == [False, False, True]
    # twice the patch spread in the calibration: twice the global term, by the same z
    got2, _ = fuse(patch, glob, [2 * x - 0.2 for x in patch_cal], glob_cal, k=4.0)
    np.testing.assert_allclose((got2 - patch).numpy(), 2 * (got - patch).numpy(), rtol=1e-5)


def brute_half_sample_mode(x: list[float]) -> float:
    x = sorted(x)
    while len(x) > 3:
        h = (len(x) + 1) // 2
        widths = [x[i + h - 1] - x[i] for i in range(len(x) - h + 1)]
        i = widths.index(min(widths))
        x = x[i : i + h]
    if len(x) == 3:
        a, b = x[1] - x[0], x[2] - x[1]
        x = x[:2] if a < b else x[1:] if b < a else x[1:2]
    return sum(x) / len(x)


def test_a_set_calibrates_itself_robustly():
    # a set of 40: 36 normal global distances and 4 global changes far above them
    g = np.random.default_rng(5)
    glob = np.r_[0.01 + 0.001 * g.normal(size=36), [0.05, 0.06, 0.07, 0.08]]
    patch = 0.3 + 0.01 * g.normal(size=40)
    logs = np.log(glob)
    c_g = brute_half_sample_mode(list(logs))
    sd_g = 1.4826 * statistics.median([abs(v - c_g) for v in logs])
    c_p = brute_half_sample_mode(list(patch))
    sd_p = 1.4826 * statistics.median([abs(v - c_p) for v in patch])
    got, changed = fuse(torch.tensor(patch), torch.tensor(glob), patch, glob, k=4.0)
    want = patch + sd_p * np.maximum(0.0, (logs - c_g) / sd_g - 4.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)
    assert changed[36:].all() and changed[:36].sum() <= 1


def test_no_spread_no_change():
    patch, glob = torch.tensor([0.2, 0.3]), torch.tensor([0.1, 0.9])
    got, changed = fuse(patch, glob, [0.2, 0.2], [0.1, 0.1], k=4.0)
    assert torch.equal(got, patch) and not changed.any()


def test_few_calibration_values_have_a_floor_on_the_spread():
    # 4 nearly equal known-good distances: the log spread is floored at ln 2 / 2
    glob_cal = [0.0100, 0.0101, 0.0100, 0.0102]
    c_g = statistics.median([math.log(x) for x in glob_cal])
    patch = torch.tensor([0.2, 0.2])
    glob = torch.tensor([0.02, 0.02 * 2**4], dtype=torch.float64)  # 2x and 32x typical
    got, changed = fuse(patch, glob, [0.1, 0.2, 0.3, 0.2], glob_cal, k=4.0)
    z = [(math.log(float(x)) - c_g) / (math.log(2) / 2) for x in glob]
    want = [0.2 + statistics.stdev([0.1, 0.2, 0.3, 0.2]) * max(0.0, zz - 4.0) for zz in z]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    assert changed.tolist() == [False, True]
