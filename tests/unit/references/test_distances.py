"""Visual references: nearest-neighbour patch distances against brute force, reference
sets, pairing, planted anomalies, the text filter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anoclip.references.distances import aggregate, nn_distances, reference_sets, text_keep_mask


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def brute_force(tokens, refs, how, keep=None):
    """Loops over every query patch, reference and reference patch."""
    n, length, _ = tokens.shape
    out = np.zeros((n, length))
    t = tokens.double().numpy()
    for i in range(n):
        for p in range(length):
            per_ref = []
            for r in refs[i].tolist():
                best = -1.0
                for j in range(length):
                    if keep is not None and not keep[r, j]:
                        continue
                    best = max(best, float(t[i, p] @ t[r, j]))
                per_ref.append(0.5 * (1 - best))
            per_ref.sort()
            if how == "interval_mean":
                out[i, p] = np.mean(per_ref[: math.ceil(0.3 * len(per_ref))])
            elif how == "min":
                out[i, p] = per_ref[0]
            else:
                out[i, p] = np.mean(per_ref)
    return out


@pytest.mark.parametrize("how", ["interval_mean", "min", "mean"])
@pytest.mark.parametrize("num_refs", ["all", 2, 1])
@pytest.mark.parametrize("reuse_bytes", [0, 2**20])  # each pair computed once, or per query
def test_nn_distances_match_brute_force(how, num_refs, reuse_bytes):
    g = torch.Generator().manual_seed(0)
    tokens = unit(torch.randn(6, 9, 5, generator=g))
    refs = reference_sets(torch.randn(6, 4, generator=g), torch.arange(6), num_refs)
    keep = torch.rand(6, 9, generator=g) > 0.3
    for k in (None, keep):
        want = brute_force(tokens, refs, how, k)
        got = nn_distances(  # 2 references per similarity chunk
            tokens, refs, how, k, chunk_elems=9 * 9 * 2, reuse_bytes=reuse_bytes
        ).numpy()
        assert np.abs(got - want).max() < 1e-6


def test_interval_mean_uses_ceiling():
    d = torch.tensor([[0.4, 0.1, 0.3]])  # R = 3 -> ⌈0.9⌉ = 1 smallest
    assert aggregate(d, "interval_mean").item() == pytest.approx(0.1)
    d = torch.arange(10.0).view(1, 10)  # R = 10 -> 3 smallest
    assert aggregate(d, "interval_mean").item() == pytest.approx(1.0)


def test_reference_sets():
    g = torch.Generator().manual_seed(1)
    cls = torch.randn(7, 8, generator=g)
    groups = torch.tensor([0, 0, 1, 2, 3, 4, 5])  # units 0 and 1 are tiles of one image
    sim = unit(cls) @ unit(cls).T
    nn = reference_sets(cls, groups, 1, "cls_nn")
    for i, r in enumerate(nn):
        allowed = [j for j in range(7) if groups[j] != groups[i]]
        assert int(r) == max(allowed, key=lambda j: float(sim[i, j]))
    every = reference_sets(cls, groups, "all")
    assert [len(r) for r in every] == [5, 5, 6, 6, 6, 6, 6]
    assert 1 not in every[0].tolist() and 0 not in every[0].tolist()
    knn = reference_sets(cls, groups, 3)
    assert all(len(r) == 3 for r in knn)
    with pytest.raises(ValueError):
        reference_sets(cls[:2], torch.tensor([0, 0]), 1)


@pytest.mark.parametrize("pairing", ["matching", "random"])
@pytest.mark.parametrize("n", [6, 7])
def test_dual_pairing_is_symmetric(pairing, n):
    cls = torch.randn(n, 8, generator=torch.Generator().manual_seed(n))
    partner = [
        int(r)
        for r in reference_sets(cls, torch.arange(n), 1, pairing, torch.Generator().manual_seed(3))
    ]
    assert all(partner[i] != i for i in range(n))
    asymmetric = [i for i in range(n) if partner[partner[i]] != i]
    assert len(asymmetric) == n % 2  # only the leftover of an odd count borrows a partner
    again = [
        int(r)
        for r in reference_sets(cls, torch.arange(n), 1, pairing, torch.Generator().manual_seed(3))
    ]
    assert again == partner  # seeded


def test_matching_pairs_most_similar_first():
    cls = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    partner = [int(r) for r in reference_sets(cls, torch.arange(4), 1, "matching")]
    assert partner == [1, 0, 3, 2]


def planted_tokens(seed=0, n=5, length=16, dim=12):
    """Normal patches come from a few shared 'textures'; query 0, patch 5 is foreign."""
    g = torch.Generator().manual_seed(seed)
    textures = unit(torch.randn(4, dim, generator=g))
    pick = torch.randint(0, 4, (n, length), generator=g)
    tokens = textures[pick] + 0.05 * torch.randn(n, length, dim, generator=g)
    defect = unit(torch.randn(dim, generator=g))
    tokens[0, 5] = defect
    return unit(tokens), defect


def test_planted_anomaly_gets_the_top_score():
    tokens, _ = planted_tokens()
    refs = reference_sets(torch.randn(5, 3), torch.arange(5), "all")
    d = nn_distances(tokens, refs, "interval_mean")
    assert int(d[0].argmax()) == 5
    assert float(d[0, 5]) > 2 * float(d[0, torch.arange(16) != 5].max())
    pair = nn_distances(tokens, reference_sets(torch.randn(5, 3), torch.arange(5), 1), "min")
    assert int(pair[0].argmax()) == 5


def test_text_filter_removes_an_anomalous_reference():
    tokens, defect = planted_tokens(1)
    tokens[1, 9] = defect  # reference 1 has the very same defect: it explains it away
    refs = [torch.tensor([1])] + [torch.tensor([0])] * 4
    unfiltered = nn_distances(tokens, refs, "min")
    assert float(unfiltered[0, 5]) < 1e-6
    text_probs = torch.full((5, 16), 0.2)
    text_probs[1, 9] = 0.9  # the text branch flags the reference's defect patch
    keep = text_keep_mask(text_probs, 0.9)
    assert not keep[1, 9] and keep.sum() == 5 * 16 - 1
    filtered = nn_distances(tokens, refs, "min", keep)
    assert int(filtered[0].argmax()) == 5
    assert float(filtered[0, 5]) > 5 * float(filtered[0, torch.arange(16) != 5].max())
