"""Maps, scores, views and smoothing against hand-computed and library references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from anoclip.clip.scoring import (
    gaussian_blur,
    image_scores,
    patch_map,
    probs_from_cosines,
    text_cosines,
    tile_maps,
)
from anoclip.clip.views import NUM_VIEWS, augmented_views
from anoclip.data.preprocess import plan_layout, resize_map, stitch


def test_anomaly_prob_is_sigmoid_of_cosine_gap():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 8, generator=g) * 3
    feats = torch.nn.functional.normalize(torch.randn(8, 2, generator=g), dim=0)
    for tau in (1.0, 0.07):
        e = emb.double() / emb.double().norm(dim=-1, keepdim=True)
        gap = e @ feats[:, 1].double() - e @ feats[:, 0].double()
        want = 1 / (1 + torch.exp(-gap / tau))
        ours = probs_from_cosines(text_cosines(emb, feats), tau)
        assert torch.allclose(ours.double(), want, atol=1e-6)


def test_patch_map_small_case_by_hand():
    p = torch.arange(9, dtype=torch.float32).view(1, 9) / 10  # 3×3 grid
    m = patch_map(p, (3, 3), (3, 3))  # align_corners=True upsampling to 3×3 is identity
    grid = np.arange(9).reshape(3, 3) / 10
    padded = np.pad(grid, 1, mode="edge")
    want = np.array([[padded[i : i + 3, j : j + 3].mean() for j in range(3)] for i in range(3)])
    assert np.allclose(m[0].numpy(), want, atol=1e-7)
    # corners of an align_corners=True upsampling keep the grid's corner values
    big = patch_map(p, (3, 3), (9, 9))[0].numpy()
    assert np.isclose(big[0, 0], want[0, 0]) and np.isclose(big[-1, -1], want[-1, -1])
    assert np.isclose(big[4, 4], want[1, 1])


def test_image_score_is_view_mean_then_tile_mean():
    feats = torch.nn.functional.normalize(torch.randn(8, 2), dim=0)
    cls = torch.randn(3, 5, 8)  # 3 tiles: image 0 has one, image 1 has two
    e = cls.double() / cls.double().norm(dim=-1, keepdim=True)
    p = 1 / (1 + torch.exp(-(e @ feats[:, 1].double() - e @ feats[:, 0].double())))  # [3, 5]
    want = torch.stack([p[0].mean(), (p[1].mean() + p[2].mean()) / 2])
    ours = image_scores(text_cosines(cls, feats), 1.0, [1, 2])
    assert torch.allclose(ours.double(), want, atol=1e-6)


def test_tile_maps_average_layer_maps():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(2, 3, 9, 2, generator=g) * 2 - 1  # 2 tiles, 3 layers, 3×3 grid
    want = torch.stack(
        [
            torch.stack(
                [patch_map(probs_from_cosines(cos[t, k], 0.5)[None], (3, 3), (6, 6))[0]
                 for k in range(3)]
            ).mean(0)
            for t in range(2)
        ]
    )  # fmt: skip
    assert torch.allclose(tile_maps(cos, (3, 3), 6, 0.5), want, atol=1e-7)


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_matches_scipy(sigma):
    x = np.random.default_rng(0).random((2, 40, 33)).astype(np.float32)
    ours = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    want = np.stack([ndimage.gaussian_filter(x[i].astype(np.float64), sigma) for i in range(2)])
    assert np.abs(ours - want).max() < 1e-5


def test_views():
    x = torch.randn(2, 3, 32, 32)
    v = augmented_views(x)
    assert v.shape == (2, NUM_VIEWS, 3, 32, 32)
    assert torch.equal(v[:, 0], x)
    assert torch.equal(v[:, 17], x.flip(-1))  # hflip after 8 rotations + 8 translations
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(v[:, 18, 0], grey) and torch.allclose(v[:, 18, 2], grey)
    assert torch.equal(v[:, 20], torch.rot90(x, 2, dims=(-2, -1)))


def test_rotation_view_against_map_coordinates():
    """View 1 (θ = −π/4): out(x, y) = in(cos θ·x − sin θ·y, sin θ·x + cos θ·y) in [−1, 1]."""
    n = 33
    img = np.random.default_rng(1).random((n, n)).astype(np.float32)
    x = torch.from_numpy(img).expand(1, 3, n, n).contiguous()
    got = augmented_views(x)[0, 1, 0].numpy()
    theta = -math.pi / 4
    ii, jj = np.mgrid[0:n, 0:n]
    xn, yn = -1 + 2 * jj / (n - 1), -1 + 2 * ii / (n - 1)
    sx = math.cos(theta) * xn - math.sin(theta) * yn
    sy = math.sin(theta) * xn + math.cos(theta) * yn
    cols, rows = (sx + 1) * (n - 1) / 2, (sy + 1) * (n - 1) / 2
    inside = (cols >= 0) & (cols <= n - 1) & (rows >= 0) & (rows <= n - 1)
    want = ndimage.map_coordinates(img.astype(np.float64), [rows, cols], order=1)
    assert inside.sum() > n * n / 2
    assert np.abs(got[inside] - want[inside]).max() < 1e-5


def test_translation_view_shifts_by_10_percent():
    x = torch.zeros(1, 3, 41, 41)
    x[..., 20, 20] = 1.0
    v = augmented_views(x)[0]
    # view 9 is the (+0.2, +0.2) translation: grid x' = x + 0.2, i.e. content moves by -4 px
    peak = (v[9, 0] == v[9, 0].max()).nonzero()[0].tolist()
    assert peak == [16, 16]


def test_layout_and_stitch_two_tiles():
    layout = plan_layout(300, 500, 240, "two_tile")
    assert layout.size == (240, 400) and layout.offsets == (0, 160)
    tiles = torch.stack([torch.full((240, 240), 1.0), torch.full((240, 240), 3.0)])
    m = stitch(tiles, layout)
    assert m.shape == (240, 400)
    assert m[0, 0] == 1 and m[0, 399] == 3 and m[0, 200] == 2  # overlap [160, 240) averaged
    assert plan_layout(300, 500, 240, "none").size == (240, 240)
    assert plan_layout(240, 240, 240, "auto").num_tiles == 1
    portrait = plan_layout(800, 240, 240, "auto")
    assert portrait.axis == 0 and portrait.num_tiles == math.ceil(800 / 240)


def test_resize_map_keeps_range():
    m = torch.rand(15, 15)
    big = resize_map(m, (100, 70))
    assert big.shape == (100, 70)
    assert big.min() >= m.min() - 1e-6 and big.max() <= m.max() + 1e-6
