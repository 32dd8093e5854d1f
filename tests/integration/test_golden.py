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
from anoclip.detector import Sample
from anoclip.preprocess import Layout
from anoclip.tta import TTAOverrides

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
        res = det.run_batch(golden_samples(golden, rows), det.text_bank(cls), tta=False)
        maps[rows] = np.stack([m.numpy() for m in res.maps])
        scores[rows] = res.scores.numpy()
    assert centred(maps, golden["map_plain"]).max() <= 1e-3
    assert scores_centred(scores, golden[key]) <= 1e-3


@pytest.mark.parametrize("adapter", ["text", "linear"])
def test_maps_after_tta(seed0_backbone, golden, adapter):
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
        res = det.run_batch(golden_samples(golden, rows), det.text_bank(cls), True, hook)
        maps[rows] = np.stack([m.numpy() for m in res.maps])
    err = centred(maps, golden[f"map_tta_{adapter}"])
    assert err.max() <= 1e-3, err
    # and TTA really moved the map (so the comparison is not vacuous)
    assert centred(golden["map_plain"], golden[f"map_tta_{adapter}"]).min() > 0.1
