"""The familiarity check against a float64 brute-force recomputation and a hand-built case."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoclip.references import familiarity


def brute_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_spread_and_distance_match_a_float64_loop():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(5, 8)) + 3.0
    x = rng.normal(size=(3, 8))
    unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    spread = [1 - brute_cos(unit[i], np.delete(unit, i, 0).mean(0)) for i in range(5)]
    dist = [1 - brute_cos(x[k], unit.mean(0)) for k in range(3)]
    got = familiarity.own_spread(torch.tensor(ref)).numpy()
    assert got == pytest.approx(spread, abs=1e-6)
    got = familiarity.centroid_distance(torch.tensor(x), torch.tensor(ref)).numpy()
    assert got == pytest.approx(dist, abs=1e-6)


def test_another_product_is_unfamiliar_a_defect_is_not():
    rng = np.random.default_rng(1)
    base = rng.normal(size=64)
    good = torch.tensor(base + 0.1 * rng.normal(size=(4, 64)))
    defect = torch.tensor(base + 0.1 * rng.normal(size=64))[None]
    defect[0, :3] += 0.5  # a few features change
    other = torch.tensor(rng.normal(size=(2, 64)))  # another product: everything changes
    flags = familiarity.unfamiliar(torch.cat([defect, other]), good)
    assert flags.tolist() == [False, True, True]
    assert not familiarity.unfamiliar(other, good[:1]).any()  # one image: no spread
    assert "2 of 3" in familiarity.unfamiliar_message(2, 3, "the bank's images")
