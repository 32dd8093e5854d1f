"""Reference choice with the near-duplicate guard, and RsCIN, against loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoclip.references.neighbours import duplicate_mask, nearest_references, rscin


def _glob(n=8, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def _cos(x: torch.Tensor) -> np.ndarray:
    a = x.numpy().astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a @ a.T


def test_nearest_references_are_the_k_most_similar_others():
    x = _glob()
    c = _cos(x)
    for k in (1, 3, 7):
        refs = nearest_references(x, k)
        for i, r in enumerate(refs):
            others = sorted((j for j in range(8) if j != i), key=lambda j: -c[i, j])
            assert r.tolist() == others[:k]
    assert [sorted(r.tolist()) for r in nearest_references(x, "all")] == [
        [j for j in range(8) if j != i] for i in range(8)
    ]
    with pytest.raises(ValueError):
        nearest_references(x, 0)


def test_guard_skips_near_duplicates_and_takes_the_next_nearest():
    x = _glob()
    x = torch.cat([x, x[2:3] * 1.01 + 1e-4])  # image 8 is a near-duplicate of image 2
    dup = duplicate_mask(x, 0.999)
    assert dup.sum() == 2 and bool(dup[2, 8]) and bool(dup[8, 2])
    c = _cos(x)
    plain = nearest_references(x, 1)
    assert plain[2].tolist() == [8] and plain[8].tolist() == [2]
    guarded = nearest_references(x, 2, exclude=dup)
    for i, r in enumerate(guarded):
        allowed = [j for j in range(9) if j != i and not dup[i, j]]
        assert r.tolist() == sorted(allowed, key=lambda j: -c[i, j])[:2]
    assert 8 not in nearest_references(x, "all", exclude=dup)[2].tolist()


def test_guard_never_leaves_an_image_without_references():
    x = torch.ones(3, 4)  # all identical
    dup = duplicate_mask(x, 0.9)
    refs = nearest_references(x, 1, exclude=dup)
    assert all(len(r) == 1 and int(r[0]) != i for i, r in enumerate(refs))


def test_rscin_equals_a_loop_over_k_nearest_including_self():
    x = _glob(n=7)
    s = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2, 0.4])
    c = np.maximum(_cos(x), 0.0)
    raw = s.numpy().astype(np.float64)
    norm = (raw - 0.1) / 0.8  # MuSc's min-max normalised scores
    ks = (1, 2, 3)
    want, musc = np.zeros(7), np.zeros(7)
    for i in range(7):
        for k in ks:
            top = np.argsort(-c[i], kind="stable")[:k]  # self first (cos 1)
            weights = sum(c[i, j] for j in top)
            want[i] += sum(c[i, j] * raw[j] for j in top) / weights / len(ks)
            musc[i] += sum(c[i, j] * norm[j] for j in top) / weights / len(ks)
    got = rscin(s, x, ks).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose((got - 0.1) / 0.8, musc, atol=1e-6)  # MuSc's, up to its scale
    np.testing.assert_allclose(rscin(s, x, (1,)).numpy(), raw, atol=1e-6)  # k = 1: itself
