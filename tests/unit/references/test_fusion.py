"""Fusion of the text and visual maps."""

from __future__ import annotations

import pytest
import torch

from anoclip.references.fusion import RunningMoments, fuse_maps, moments


def test_fusion():
    t = torch.rand(2, 4, 4)
    v = torch.rand(2, 4, 4)
    assert torch.allclose(fuse_maps(t, v, "linear", 0.25), 0.25 * t + 0.75 * v)
    h = fuse_maps(t, v, "harmonic", 0.5)
    assert torch.allclose(h, 2 * t * v / (t + v), atol=1e-5)
    z = fuse_maps(t, v, "batch_z", 0.5)
    assert z.min() >= 0 and z.max() <= 1
    run = RunningMoments()
    for part in t.split(1):
        run.add(part)
    assert run.result()[0] == pytest.approx(moments(t)[0]) and run.result()[1] == pytest.approx(
        moments(t)[1]
    )
