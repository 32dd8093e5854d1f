"""Our AnoCLIP path reproduces the official AnoVL code's arrays (../shared/golden).

Tolerances from the golden README: tokens and text features ≤ 1e-4 relative; maps and
scores ≤ 1e-3 centred relative error (‖ours − golden‖ / ‖golden − mean(golden)‖), since
random-weight maps sit near 0.5 with a spread of about 2e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoclip import Detector
from anoclip.clip.tta import TTAOverrides
from anoclip.records import Layout, Sample
from anoclip.testing import run_batch

from ..conftest import MVTEC, need

CLASSES = ("screw", "transistor")


def rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def centred(ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-row centred relative error of `[N, ...]` arrays."""
    o, r = ours.reshape(len(ours), -1), ref.reshape(len(ref), -1)
    return np.linalg.norm(o - r, axis=1) / np.linalg.norm(r - r.mean(axis=1, keepdims=True), axis=1)


def scores_centred(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref - ref.mean()))


@pytest.fixture(scope="module")
def detector(seed0_backbone):
    return Detector(backbone=seed0_backbone, class_names="verbatim")


def golden_samples(golden, rows) -> list[Sample]:
    x = torch.from_numpy(golden["input"])
    return [
        Sample(i, str(golden["paths"][i]), x[i : i + 1], Layout((240, 240), 240), (240, 240))
        for i in rows
    ]


def rows_of(golden, cls):
    return [i for i, c in enumerate(golden["classes"]) if c == cls]


def test_preprocessed_input(detector, golden):
    need(MVTEC)
    for i, path in enumerate(golden["paths"]):
        ours = detector.prepare(str(MVTEC / str(path))).tiles[0].numpy()
        assert rel(ours, golden["input"][i]) <= 1e-4


@pytest.mark.parametrize("cls", CLASSES)
def test_text_features_and_sentences(detector, golden, cls):
    bank = detector.text_bank(cls)
    assert rel(bank.features.numpy(), golden[f"text_features/{cls}"]) <= 1e-4
    sentences = golden[f"text_sentences/{cls}"]  # [462, C, 2]
    ref = np.concatenate([sentences[..., 0], sentences[..., 1]])
    assert rel(bank.sentences.numpy(), ref) <= 1e-4


def test_cls_and_vv_tokens(detector, golden):
    with torch.inference_mode():
        out = detector.encoder(torch.from_numpy(golden["input"]))
    assert rel(out.cls.numpy(), golden["cls"]) <= 1e-4
    assert rel(out.vv[12].numpy(), golden["vv_tokens"]) <= 1e-4


@pytest.mark.parametrize("image_score,key", [("cls", "score_plain"), ("cls_aug22", "score_views")])
def test_plain_map_and_scores(seed0_backbone, golden, image_score, key):
    det = Detector(backbone=seed0_backbone, class_names="verbatim", image_score=image_score)
    maps = np.zeros_like(golden["map_plain"])
    scores = np.zeros(len(golden["paths"]))
    for cls in CLASSES:
        rows = rows_of(golden, cls)
        res = run_batch(det, golden_samples(golden, rows), det.text_bank(cls), tta=False)
        maps[rows] = np.stack([r.map.numpy() for r in res])
        scores[rows] = [r.score for r in res]
    assert centred(maps, golden["map_plain"]).max() <= 1e-3
    assert scores_centred(scores, golden[key]) <= 1e-3


# Float32 TTA parity bar per adapter (centred, per image), derived from measurement
# (tests/integration/tta_spread.py; ATEN_CPU_CAPABILITY = default / avx2 / avx512, AVX-512 EPYC).
# With random weights the TTA gradients are ~1e-8, the size of Adam's ε, so float32 rounding,
# which depends on the CPU's kernels, moves the adapted map. Against our float64 TTA
# (test_tta_float64.py: exact to ~1e-12) on the golden's tokens, max over the 6 images:
#
#   e_f32 = our float32 vs float64     text 1.53e-3 / 1.67e-3 / 3.35e-3
#                                      linear 1.39e-4 / 1.24e-4 / 1.25e-4
#   e_gold = golden vs float64         text 1.76e-3, linear 1.31e-4 (CPU-independent)
#   (our float32 vs golden, measured:  text 2.25e-3 / 0.95e-3 / 4.29e-3,
#                                      linear 1.32e-4 / 0.92e-4 / 1.00e-4)
#
# By the triangle inequality, our-vs-golden ≤ e_f32 + e_gold. Other CPUs round differently
# (one image's e_f32 varied 3.5x across the three capabilities), so the CPU-dependent term
# gets a margin of 2: tol = 2·max e_f32 + e_gold = 8.5e-3 (text), 4.1e-4 (linear), rounded
# up. The linear floor (~1e-4) is the float32 storage of maps near 0.5 (spread ~2e-4).
TTA_TOL = {"text": 1e-2, "linear": 5e-4}


@pytest.mark.parametrize("adapter", ["text", "linear"])
def test_maps_after_tta(seed0_backbone, golden, adapter):
    """Our float32 TTA maps match the golden within float32 rounding (TTA_TOL above);
    the algorithm itself is checked exactly in float64 by test_tta_float64.py."""
    det = Detector(
        backbone=seed0_backbone, class_names="verbatim", adapter=adapter, image_score="cls"
    )
    maps = np.zeros_like(golden[f"map_tta_{adapter}"])
    for cls in CLASSES:
        rows = rows_of(golden, cls)
        noise = torch.from_numpy(golden["tta_noise"][rows])  # [n, steps, 1, 15, 15, C]
        hook = TTAOverrides(
            weight=torch.from_numpy(golden[f"tta_{adapter}_init_w"][rows]),
            bias=torch.from_numpy(golden[f"tta_{adapter}_init_b"][rows]),
            noise=noise.reshape(len(rows), noise.shape[1], 1, -1, noise.shape[-1]),
        )
        res = run_batch(det, golden_samples(golden, rows), det.text_bank(cls), True, hook)
        maps[rows] = np.stack([r.map.numpy() for r in res])
    err = centred(maps, golden[f"map_tta_{adapter}"])
    assert err.max() <= TTA_TOL[adapter], err
    # and TTA really moved the map, by far more than the bar (the comparison is not vacuous)
    moved = centred(golden["map_plain"], golden[f"map_tta_{adapter}"]).min()
    assert moved > 0.1 and moved > 100 * TTA_TOL[adapter], moved
