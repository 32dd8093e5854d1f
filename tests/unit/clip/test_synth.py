"""Synthesized anomalies: masks within bounds, seeded, blended only inside the mask."""

from __future__ import annotations

import math

import torch

from anoclip.clip.synth import MAX_AREA, MIN_AREA, perlin, perlin_mask, synthesize, token_labels


def test_synthesized_masks_are_within_bounds_and_seeded():
    noise = perlin((64, 64), (4, 4), torch.Generator().manual_seed(0))
    assert noise.abs().max() <= 1.5 and noise.std() > 0.1
    for seed in range(20):
        mask = perlin_mask((240, 240), (15, 15), torch.Generator().manual_seed(seed))
        area = float(mask.mean())
        assert MIN_AREA <= area <= MAX_AREA or abs(area - math.pi * 0.18 * 0.09) < 0.01
        assert token_labels(mask, (15, 15)).sum() >= 1
    x = torch.rand(3, 240, 240)
    a = synthesize(x, (15, 15), torch.Generator().manual_seed(5))
    b = synthesize(x, (15, 15), torch.Generator().manual_seed(5))
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    assert a.image.min() >= 0 and a.image.max() <= 1
    inside = a.mask.bool()
    assert torch.equal(a.image[:, ~inside], x[:, ~inside])  # untouched outside the mask
    assert (a.image[:, inside] - x[:, inside]).abs().mean() > 0.01
    assert a.labels.shape == (225,) and a.labels.sum() >= 1
