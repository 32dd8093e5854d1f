"""Patch features and mutual scores, against brute-force loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anoclip.references.distances import nn_distances
from anoclip.references.patches import (
    common_grid,
    concat_layers,
    gaussian_blur,
    image_scores,
    layer_norm_channels,
    layout_descriptor,
    mutual_scores,
    neighbourhood_mean,
    pairwise_distances,
    patch_features,
    reduce_references,
    tokens_to_map,
    upsample,
)


def _maps(seed: int = 0, n: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, 6, 6, generator=g) * 3 + 1, torch.randn(n, 7, 3, 3, generator=g)]


def _brute_window_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the valid positions of the r×r window around each position."""
    b, c, h, w = x.shape
    out = np.zeros_like(x)
    for i in range(h):
        for j in range(w):
            rows = range(max(0, i - r // 2), min(h, i + r // 2 + 1))
            cols = range(max(0, j - r // 2), min(w, j + r // 2 + 1))
            out[:, :, i, j] = np.mean([x[:, :, a, bb] for a in rows for bb in cols], axis=0)
    return out


def test_layer_norm_over_channels_matches_formula():
    x = _maps()[0]
    got = layer_norm_channels(x).numpy()
    a = x.numpy()
    mu = a.mean(axis=1, keepdims=True)
    var = a.var(axis=1, keepdims=True)
    np.testing.assert_allclose(got, (a - mu) / np.sqrt(var + 1e-5), atol=1e-5)


@pytest.mark.parametrize("r", [1, 3, 5])
def test_neighbourhood_mean_equals_brute_force_window_loop(r):
    x = _maps()[0]
    np.testing.assert_allclose(
        neighbourhood_mean(x, r).numpy(), _brute_window_mean(x.numpy(), r), atol=1e-5
    )


def test_neighbourhood_mean_rejects_even_radius():
    with pytest.raises(ValueError):
        neighbourhood_mean(torch.zeros(1, 1, 3, 3), 2)


def test_musc_zero_padding_gives_the_same_normalised_features():
    """MuSc averages r×r windows with zero padding counted; after L2 normalisation that
    equals the clipped-window mean used here."""
    x = layer_norm_channels(_maps()[0])
    r = 5
    unfold = torch.nn.functional.unfold(x, r, padding=r // 2)  # [B, C·r², L]
    b, c = x.shape[:2]
    musc = unfold.view(b, c, r * r, -1).mean(dim=2)  # zeros included
    ours = neighbourhood_mean(x, r).flatten(2)
    torch.testing.assert_close(
        torch.nn.functional.normalize(musc, dim=1), torch.nn.functional.normalize(ours, dim=1)
    )


def test_patch_features_brute_force_per_position():
    maps = _maps()
    feats = patch_features(maps, radii=(1, 3), grid="finest")
    assert sorted(feats) == [(0, 1), (0, 3), (1, 1), (1, 3)]
    assert common_grid(maps, "finest") == (6, 6) and common_grid(maps, "coarsest") == (3, 3)
    # a stride in input pixels: ⌈H/g⌉ × ⌈W/g⌉ whatever the layers' own grids
    assert common_grid(maps, 12, (240, 240)) == (20, 20)
    assert common_grid(maps, 16, (240, 250)) == (15, 16)
    assert common_grid(maps, (4, 5)) == (4, 5)
    with pytest.raises(ValueError, match="input size"):
        common_grid(maps, 12)
    x0 = maps[0].numpy()
    for r in (1, 3):
        # layer 0 is on the finest grid already: LN per position, window mean, L2
        mu, sd = x0.mean(1, keepdims=True), np.sqrt(x0.var(1, keepdims=True) + 1e-5)
        z = _brute_window_mean((x0 - mu) / sd, r)
        want = z.reshape(3, 5, 36).transpose(0, 2, 1)
        want /= np.linalg.norm(want, axis=-1, keepdims=True)
        np.testing.assert_allclose(feats[(0, r)].numpy(), want, atol=1e-5)
    for k, v in feats.items():
        assert v.shape == (3, 36, 5 if k[0] == 0 else 7)
        np.testing.assert_allclose(v.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    coarse = patch_features(maps, radii=(1,), grid="coarsest")
    assert coarse[(1, 1)].shape == (3, 9, 7) and coarse[(0, 1)].shape == (3, 9, 5)


def test_tokens_to_map_drops_cls_and_keeps_row_major_order():
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)  # CLS + 2×3 grid
    m = tokens_to_map(tokens, (2, 3))
    assert m.shape == (2, 3, 2, 3)
    for p in range(6):
        torch.testing.assert_close(m[:, :, p // 3, p % 3], tokens[:, 1 + p])
    with pytest.raises(ValueError):
        tokens_to_map(tokens, (3, 3))


def test_concat_layers_distance_is_the_layer_mean_at_one_match():
    feats = patch_features(_maps(), radii=(3,), grid="finest")
    cat = concat_layers(feats)[(-1, 3)]
    a, b = 0, 1
    p, q = 4, 17
    want = np.mean(
        [0.5 * (1 - float(feats[(li, 3)][a, p] @ feats[(li, 3)][b, q])) for li in (0, 1)]
    )
    assert math.isclose(0.5 * (1 - float(cat[a, p] @ cat[b, q])), want, abs_tol=1e-6)


def _brute_pairwise(t: torch.Tensor) -> np.ndarray:
    n, length, _ = t.shape
    out = np.full((n, n, length), np.nan)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            for p in range(length):
                out[i, j, p] = min(0.5 * (1 - float(t[i, p] @ t[j, q])) for q in range(length))
    return out


def test_pairwise_distances_equal_brute_force_in_any_block_size():
    g = torch.Generator().manual_seed(2)
    t = torch.nn.functional.normalize(torch.randn(4, 6, 3, generator=g), dim=-1)
    want = _brute_pairwise(t)
    for block in (36, 72, 10**6):
        np.testing.assert_allclose(pairwise_distances(t, block).numpy(), want, atol=1e-6)


def test_mutual_scores_mean_over_sets_of_interval_means():
    feats = patch_features(_maps(n=5), radii=(1, 3), grid="coarsest")
    refs = [torch.tensor([j for j in range(5) if j != i]) for i in range(5)]
    got = mutual_scores(feats, refs)
    want = np.zeros((5, 9))
    for v in feats.values():
        d = _brute_pairwise(v)
        for i in range(5):
            others = np.sort(d[i, refs[i].numpy()], axis=0)  # [R, L]
            k = math.ceil(0.3 * 4)
            want[i] += others[:k].mean(axis=0) / len(feats)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    # the all-pairs route agrees with the bounded-memory one for any reference choice
    some = [torch.tensor([(i + 1) % 5, (i + 3) % 5]) for i in range(5)]
    for how in ("interval_mean", "min", "mean"):
        via_pairs = sum(reduce_references(pairwise_distances(v), some, how) for v in feats.values())
        via_nn = sum(nn_distances(v, some, how) for v in feats.values())
        torch.testing.assert_close(via_pairs, via_nn, atol=1e-5, rtol=0)


def test_upsample_blur_and_image_scores():
    s = torch.zeros(2, 9)
    s[1, 4] = 1.0
    maps = upsample(s, (3, 3), (12, 12))
    assert maps.shape == (2, 12, 12) and float(maps[0].abs().max()) == 0
    assert image_scores(s).tolist() == [0.0, 1.0]
    from scipy import ndimage

    for sigma in (1.5, 4.0):  # scipy "nearest" = edge-replicate padding
        want = [
            ndimage.gaussian_filter(m, sigma, mode="nearest", truncate=4.0) for m in maps.numpy()
        ]
        np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), np.stack(want), atol=1e-6)
    torch.testing.assert_close(gaussian_blur(maps, 0), maps)


def test_layout_descriptor_on_the_common_grid():
    maps = _maps()  # [3, 5, 6, 6] and [3, 7, 3, 3]
    d = layout_descriptor(maps, (6, 6))
    assert d.shape == (3, (5 + 7) * 36)
    # brute force, numpy: LN over channels per position, the 3×3 layer bilinearly onto 6×6
    # (align_corners=False: source coordinate (i + 0.5)/2 − 0.5, clamped), flatten, L2 per
    # layer, concatenate, L2
    parts = []
    for m in maps:
        x = m.double().numpy()
        z = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
        h = z.shape[-1]
        if h != 6:
            src = np.clip((np.arange(6) + 0.5) * h / 6 - 0.5, 0, h - 1)
            lo = np.floor(src).astype(int)
            hi = np.minimum(lo + 1, h - 1)
            t = src - lo
            z = z[:, :, lo] * (1 - t)[:, None] + z[:, :, hi] * t[:, None]  # rows
            z = z[..., lo] * (1 - t) + z[..., hi] * t  # columns
        f = z.reshape(3, -1)
        parts.append(f / np.linalg.norm(f, axis=1, keepdims=True))
    want = np.concatenate(parts, axis=1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(d.numpy(), want, atol=1e-5)
