"""The series screen (issue 20) against loops, numpy medians and hand-computed cases: ratios,
reference choice, the verdict, pool distances and the scores they give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoclip.notes import series_summary
from anoclip.references.neighbours import duplicate_mask, nearest_references
from anoclip.references.patches import mutual_scores
from anoclip.references.series import (
    DUPLICATE_RATIO,
    duplicate_ratios,
    pool_distances,
    screen_duplicates,
    series_references,
    series_scores,
    series_verdict,
    verdict_of_flags,
)

from .test_neighbours import _cos, _glob
from .test_patches import _brute_pairwise


def _brute_ratios(d: np.ndarray) -> np.ndarray:
    """r_j = median_p (d_j(p) + ε) / (median_j' d_j'(p) + ε), with numpy's medians."""
    eps = 1e-6
    consensus = np.median(d, axis=0)
    return np.array([np.median((row + eps) / (consensus + eps)) for row in d])


def test_duplicate_ratios_hand_computed():
    # 3 candidates, 2 patches: consensus (median per patch) = [0.2, 0.4]
    d = torch.tensor([[0.02, 0.04], [0.2, 0.4], [0.3, 0.8]])
    # ratios per patch: [0.1, 0.1], [1, 1], [1.5, 2] -> medians (interpolated) 0.1, 1, 1.75
    np.testing.assert_allclose(duplicate_ratios(d).numpy(), [0.1, 1.0, 1.75], rtol=1e-4)


def test_duplicate_ratios_equal_numpy_medians_for_even_and_odd_counts():
    g = torch.Generator().manual_seed(3)
    for m, length in ((4, 6), (5, 7), (10, 9)):
        d = torch.rand(m, length, generator=g) * 0.3
        np.testing.assert_allclose(
            duplicate_ratios(d).numpy(), _brute_ratios(d.numpy().astype(np.float64)), rtol=1e-5
        )


def test_screen_flags_only_the_candidate_that_explains_everything():
    g = torch.Generator().manual_seed(4)
    natural = 0.1 + 0.02 * torch.rand(9, 20, generator=g)  # 9 alike neighbours
    copy = 0.3 * natural[0:1]  # explains every patch 3× better than the rest
    d = torch.cat([copy, natural])
    flags = screen_duplicates([d])[0]
    assert flags.tolist() == [True] + [False] * 9
    # a uniformly closer set (an aligned product) is not flagged: ratios are relative
    assert not screen_duplicates([0.5 * natural])[0].any()
    # fewer than 3 candidates: no consensus, nothing flagged
    assert screen_duplicates([d[:2]])[0].tolist() == [False, False]
    # the bound is strict and configurable
    r = float(duplicate_ratios(d)[0])
    assert r < DUPLICATE_RATIO
    assert not screen_duplicates([d], ratio=r)[0][0]


def _brute_series_refs(c, i, k, skip, excl, cap=None):
    others = [j for j in range(len(c)) if j != i]
    for blocked in (skip | excl, excl, set()):
        allowed = [j for j in others if j not in blocked]
        if allowed:
            break
    ranked = sorted(allowed, key=lambda j: -c[i, j])
    if k == "all":
        return sorted(allowed) if cap is None or cap >= len(allowed) else ranked[:cap]
    return ranked[:k]


def test_series_references_skip_near_identical_and_excluded_like_a_loop():
    x = _glob(n=9)
    c = _cos(x)
    pool = nearest_references(x, 4)
    dups = [torch.tensor([True, False, True, False]) if i % 3 == 0 else torch.zeros(4, dtype=bool)
            for i in range(9)]  # fmt: skip
    excl = torch.zeros(9, 9, dtype=torch.bool)
    excl[1, 5] = excl[5, 1] = True
    for k, cap in ((1, None), (2, None), (5, None), ("all", None), ("all", 3), ("all", 50)):
        got = series_references(x, k, pool, dups, exclude=excl, cap=cap)
        for i in range(9):
            skip = set(pool[i][dups[i]].tolist())
            excluded = set(excl[i].nonzero()[:, 0].tolist())
            want = _brute_series_refs(c, i, k, skip, excluded, cap)
            assert got[i].tolist() == want, (k, cap, i)
    with pytest.raises(ValueError):
        series_references(x, 0, pool, dups)


def test_series_references_never_leave_an_image_without_references():
    x = _glob(n=3)
    pool = nearest_references(x, 2)
    every = [torch.ones(2, dtype=torch.bool)] * 3  # each other image near-identical
    refs = series_references(x, 1, pool, every)
    assert [r.tolist() for r in refs] == [p[:1].tolist() for p in pool]
    all_excluded = ~torch.eye(3, dtype=torch.bool)
    refs = series_references(x, "all", pool, every, exclude=all_excluded)
    assert [sorted(r.tolist()) for r in refs] == [[1, 2], [0, 2], [0, 1]]


def test_series_verdict_flags_share_and_bound():
    pool = [torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3]), torch.tensor([0, 1, 3]),
            torch.tensor([0, 1, 2])]  # fmt: skip
    dups = [torch.tensor([True, False, False]), torch.tensor([True, False, False]),
            torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)]  # fmt: skip
    v = series_verdict(pool, dups)
    assert v.flags.tolist() == [True, True, False, False]
    assert [p.tolist() for p in v.partners] == [[1], [0], [], []]
    assert v.share == 0.5 and v.untrusted  # half the set: dominated (bound inclusive)
    assert not series_verdict(pool, dups, bound=0.51).untrusted
    noted = {"a.png": ("near_identical",), "b.png": ("unfamiliar", "near_identical"),
             "c.png": ("unfamiliar",)}  # fmt: skip
    assert series_summary(noted, 4) == {"untrusted": True, "share": 0.5, "bound": 0.5,
                                        "images": ["a.png", "b.png"]}  # fmt: skip
    assert not series_summary(noted, 5)["untrusted"]  # 2 of 5 < 0.5
    assert "\n" not in v.warning() and "2 of 4 images (50%)" in v.warning()
    assert not series_verdict([], []).untrusted


def test_verdict_of_flags_matches_the_screen_verdict():
    pool = [torch.tensor([1, 2, 3]), torch.tensor([0, 2, 3]), torch.tensor([0, 1, 3])]
    dups = [torch.tensor([False, True, False]), torch.zeros(3, dtype=torch.bool),
            torch.zeros(3, dtype=torch.bool)]  # fmt: skip
    v = series_verdict(pool, dups)
    w = verdict_of_flags([True, False, False])
    assert w.flags.tolist() == v.flags.tolist() and w.share == v.share == 1 / 3
    assert not w.untrusted and not v.untrusted
    assert verdict_of_flags([True, True, False]).untrusted  # 2 of 3 >= 0.5
    assert [p.tolist() for p in w.partners] == [[], [], []]  # unknown from flags alone


def test_pool_distances_equal_brute_force_for_any_pool_and_chunk():
    g = torch.Generator().manual_seed(5)
    t = torch.nn.functional.normalize(torch.randn(5, 6, 3, generator=g), dim=-1)
    want = _brute_pairwise(t)
    # asymmetric and mutual pairs, an empty pool, a pool in any order
    pool = [torch.tensor([1, 4]), torch.tensor([0]), torch.tensor([], dtype=torch.long),
            torch.tensor([4, 0, 1]), torch.tensor([2])]  # fmt: skip
    for chunk in (36, 72, 10**6):
        got = pool_distances({(0, 1): t}, pool, chunk_elems=chunk)[(0, 1)]
        for i, p in enumerate(pool):
            assert got[i].shape == (len(p), 6)
            np.testing.assert_allclose(got[i].numpy(), want[i, p.numpy()], atol=1e-6)
    with pytest.raises(ValueError):
        pool_distances({(0, 1): t}, [torch.tensor([0])] * 5)  # an image in its own pool


def _series_set(seed: int = 6, n: int = 12, length: int = 16, c: int = 8):
    """n images of random patches; image 1 re-photographs image 0 (same patches, a little
    noise) and both carry the same defect patch, unlike anything else in the set."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, c, generator=g)  # the "texture": patches mix these
    mix = torch.rand(n, length, 6, generator=g)
    f = mix @ base + 0.3 * torch.randn(n, length, c, generator=g)
    defect = 4 * torch.randn(c, generator=g)
    f[1] = f[0] + 0.05 * torch.randn(length, c, generator=g)
    f[0, 3] = defect
    f[1, 3] = defect + 0.05 * torch.randn(c, generator=g)
    f = torch.nn.functional.normalize(f, dim=-1)
    glob = torch.nn.functional.normalize(f.mean(dim=1), dim=-1)
    return {(0, 1): f, (0, 3): torch.nn.functional.normalize(f + f.roll(1, 1), dim=-1)}, glob


@pytest.mark.parametrize(
    ("k", "cap"), [(1, None), (3, None), (5, None), ("all", 4), ("all", None), ("all", 99)]
)
def test_series_scores_equal_mutual_scores_of_the_chosen_references(k, cap):
    feats, glob = _series_set()
    out = series_scores(feats, glob, k, screen=6, cap=cap)
    torch.testing.assert_close(out.scores, mutual_scores(feats, out.references), atol=1e-6, rtol=0)
    n = len(glob)
    refs = min(n - 1, cap or n) if k == "all" else k  # R; interval mean of ceil(0.3 R)
    for i, r in enumerate(out.references):
        near = set(out.pool[i][out.duplicates[i]].tolist())
        skipped = near if 2 * len(near) >= -(-3 * refs // 10) else set()  # half of them
        assert i not in r.tolist() and not skipped & set(r.tolist())
        want = n - 1 - len(skipped) if k == "all" and cap in (None, 99) else None
        assert len(r) == (want if want is not None else (cap if k == "all" else k))
    if k == "all" and cap is None:  # R = 11, mean of 4: one near-identical image stays
        assert out.duplicates[0].any() and 1 in out.references[0].tolist()


def test_series_scores_skip_the_re_photograph_that_explains_the_defect_away():
    feats, glob = _series_set()
    plain = nearest_references(glob, 1)
    assert plain[0].tolist() == [1] and plain[1].tolist() == [0]  # each other's nearest
    old = mutual_scores(feats, plain)
    new = series_scores(feats, glob, 1, screen=6)
    assert new.duplicates[0][0] and new.duplicates[1][0]  # found near-identical ...
    assert 1 not in new.references[0].tolist() and 0 not in new.references[1].tolist()
    assert new.verdict.flags[:2].all() and not new.verdict.flags[2:].any()
    assert not new.verdict.untrusted  # 2 of 12 images
    for i in (0, 1):  # ... so the defect patch stands out again
        assert float(old[i, 3]) < 0.05
        assert float(new.scores[i, 3]) > 3 * float(new.scores[i].median())
        assert int(new.scores[i].argmax()) == 3


def test_series_scores_keep_the_layout_guard_and_screen_nothing_without_repeats():
    feats, glob = _series_set()
    clean = {k: v[2:] for k, v in feats.items()}  # the repeat removed
    out = series_scores(clean, glob[2:], 2, screen=6)
    assert not any(d.any() for d in out.duplicates)
    plain = nearest_references(glob[2:], 2)
    assert [r.tolist() for r in out.references] == [r.tolist() for r in plain]
    torch.testing.assert_close(out.scores, mutual_scores(clean, plain), atol=1e-6, rtol=0)
    guard = duplicate_mask(glob, 0.0)  # excludes every pair: the guard's own fallback
    out = series_scores(feats, glob, 1, exclude=guard, screen=6)
    assert all(len(r) == 1 for r in out.references)


@pytest.mark.parametrize("k", [1, 3, "all"])
def test_the_patch_scorer_runs_the_screen_by_default_and_the_old_choice_when_off(k):
    from anoclip.references.patch_scorer import PatchSet, mutual_part
    from anoclip.settings import Settings

    feats, glob = _series_set()
    patches = PatchSet(feats, glob, glob, (4, 4))  # layout = glob: the guard at 0.95
    off = Settings(series_ratio=0.0, refs_cap=0)
    scores, near, refs = mutual_part(patches, k, off)
    want = nearest_references(glob, k, duplicate_mask(glob, 0.95))
    assert [r.tolist() for r in refs] == [r.tolist() for r in want] and not near.any()
    torch.testing.assert_close(scores, mutual_scores(feats, want), atol=1e-6, rtol=0)
    scores, near, refs = mutual_part(patches, k, Settings(refs_cap=4))
    found = series_scores(feats, glob, k, exclude=duplicate_mask(glob, 0.95), cap=4)
    assert near.tolist() == found.verdict.flags.tolist() and near[:2].all()
    assert [r.tolist() for r in refs] == [r.tolist() for r in found.references]
    torch.testing.assert_close(scores, found.scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("k", "cap"), [(1, None), (5, None), ("all", 4), ("all", None)])
def test_progress_ticks_add_up_to_one_per_image(k, cap):
    feats, glob = _series_set()
    ticks: list[float] = []
    series_scores(feats, glob, k, screen=6, cap=cap, tick=ticks.append)
    assert sum(ticks) == pytest.approx(len(glob)) and min(ticks) >= 0
