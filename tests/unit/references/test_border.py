"""Border equaliser (references/border.py) against brute-force loops and numpy."""

from __future__ import annotations

import numpy as np
import torch

from anoclip.references.border import equalise, position_classes


def brute_class(y: int, x: int, h: int, w: int, depth: int) -> int:
    dy = min(y, h - 1 - y, depth)
    dx = min(x, w - 1 - x, depth)
    return dy * (depth + 1) + dx


def test_classes_by_hand():
    # 4×5 grid, depth 1: the outer ring splits into corners (0), top/bottom (1), sides (2)
    got = position_classes((4, 5), 1).view(4, 5).tolist()
    assert got == [
        [0, 1, 1, 1, 0],
        [2, 3, 3, 3, 2],
        [2, 3, 3, 3, 2],
        [0, 1, 1, 1, 0],
    ]


def test_classes_match_a_loop():
    h, w, depth = 7, 9, 2
    want = [brute_class(y, x, h, w, depth) for y in range(h) for x in range(w)]
    assert position_classes((h, w), depth).tolist() == want


def reference(scores: np.ndarray, calib: np.ndarray, grid, depth: int) -> np.ndarray:
    """A float64 loop over positions: class stats with numpy, the min rule of the doc."""
    h, w = grid
    cls = np.array([brute_class(y, x, h, w, depth) for y in range(h) for x in range(w)])
    inner = (depth + 1) ** 2 - 1

    def stats(values):
        c = np.median(values)
        below = values[values <= c] - c
        return c, np.sqrt(np.mean(below**2))

    c_in, s_in = stats(calib[:, cls == inner].ravel())
    out = scores.astype(np.float64).copy()
    for p in range(h * w):
        if cls[p] == inner:
            continue
        c_k, s_k = stats(calib[:, cls == cls[p]].ravel())
        for i in range(scores.shape[0]):
            out[i, p] = min(scores[i, p], c_in + (scores[i, p] - c_k) * min(1.0, s_in / s_k))
    return out


def test_equalise_matches_a_float64_loop():
    g = np.random.default_rng(3)
    grid, depth = (6, 8), 2
    # noisy, raised border (a padded CNN's), quiet interior; one defect on the border
    cls = position_classes(grid, depth).numpy()
    loud = np.where(cls < (depth + 1) ** 2 - 1, 3.0, 1.0)
    calib = 0.2 + 0.05 * loud * np.abs(g.normal(size=(30, 48))) + 0.02 * (loud > 1)
    scores = 0.2 + 0.05 * loud * np.abs(g.normal(size=(5, 48)))
    scores[2, 0] = 1.5
    got = equalise(torch.tensor(scores), torch.tensor(calib), grid, depth).numpy()
    np.testing.assert_allclose(got, reference(scores, calib, grid, depth), rtol=1e-12)
    assert (got <= scores + 1e-12).all()  # never raised
    assert got[2, 0] == got.max()  # the border defect still stands out


def test_quiet_border_is_left_alone():
    # transistor-like: a dark, quiet background at the border, the object in the middle
    g = np.random.default_rng(0)
    grid = (10, 10)
    cls = position_classes(grid, 3).numpy()
    scale = np.where(cls == 15, 0.1, 0.01)
    calib = 0.3 + scale * g.normal(size=(20, 100))
    scores = 0.3 + scale * g.normal(size=(4, 100))
    got = equalise(torch.tensor(scores), torch.tensor(calib), grid, 3).numpy()
    np.testing.assert_allclose(got, reference(scores, calib, grid, 3), rtol=1e-12)
    border = cls != 15
    # a quiet class is never stretched: at most shifted down by its centre's excess
    excess = max(0.0, np.median(calib[:, border]) - np.median(calib[:, ~border]))
    assert (scores[:, border] - got[:, border]).max() <= excess + 0.01


def test_off_and_empty_calibration_change_nothing():
    s = torch.rand(3, 20)
    assert torch.equal(equalise(s, s, (4, 5), 0), s)
    assert torch.equal(equalise(s, s[:0], (4, 5), 2), s)
