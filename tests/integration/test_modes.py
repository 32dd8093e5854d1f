"""Dual-image / mutual scoring end to end: the Detector, evaluate and the CLI in every mode."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from anoclip import Detector
from anoclip.cli import main

from ..conftest import evaluate_two_categories, tiny_cli


@pytest.fixture(scope="module")
def set_of_images(mvtec):
    import glob

    return sorted(glob.glob(str(mvtec / "screw/test/*/*.png")))[::20][:6]


@pytest.mark.parametrize(
    "mode,tta,refs", [("dual", "synth", None), ("mutual", "noise", None), ("mutual", "both", 2)]
)
def test_modes_end_to_end(tiny_backbone, set_of_images, mode, tta, refs):
    det = Detector(backbone=tiny_backbone, image_score="cls", tta_steps=2, batch_size=4)
    preds = det.predict(set_of_images, "screw", tta=tta, mode=mode, refs=refs)
    again = det.predict(set_of_images, "screw", tta=tta, mode=mode, refs=refs)
    assert [p.source for p in preds] == set_of_images
    for p, q in zip(preds, again):
        assert p.anomaly_map.shape == (1024, 1024) and p.anomaly_map.dtype == np.float32
        assert 0 <= p.anomaly_map.min() <= p.anomaly_map.max() <= 1 and 0 <= p.score <= 1
        assert np.array_equal(p.anomaly_map, q.anomaly_map) and p.score == q.score


def test_text_filter_and_other_fusions_run(tiny_backbone, set_of_images):
    for fusion in ("harmonic", "batch_z"):
        det = Detector(
            backbone=tiny_backbone,
            image_score="cls",
            tta_steps=1,
            ref_filter="text",
            fusion=fusion,
            ref_features="ori",
            ref_layers=(6, 12),
        )
        preds = det.predict(set_of_images[:3], "screw", tta="none", mode="mutual")
        assert all(0 <= p.score <= 1 for p in preds)


def test_single_image_falls_back_with_warning(tiny_backbone, set_of_images):
    det = Detector(backbone=tiny_backbone, image_score="cls", tta_steps=1)
    with pytest.warns(UserWarning, match="at least two images"):
        (pred,) = det.predict(set_of_images[:1], "screw", mode="dual")
    (plain,) = det.predict(set_of_images[:1], "screw")
    assert np.array_equal(pred.anomaly_map, plain.anomaly_map)


def test_bad_mode_arguments(tiny_backbone):
    det = Detector(backbone=tiny_backbone)
    for kwargs in (
        {"mode": "pairs"},
        {"mode": "dual", "refs": 3},
        {"refs": 2},
        {"mode": "mutual", "refs": 0},
        {"tta": "noisy"},
    ):
        with pytest.raises(ValueError):
            det.predict(np.zeros((8, 8, 3), np.uint8), "x", **kwargs)


def test_evaluate_runs_all_modes(tiny_config, mvtec, tmp_path):
    for mode, tta in (("anoclip", "noise"), ("dual", "synth"), ("mutual", "noise")):
        out = tmp_path / mode
        extra = ["--limit", "6", "--mode", mode, "--tta", tta, "--set", "image_score=cls",
                 "--set", "tta_steps=1"]  # fmt: skip
        code = main(evaluate_two_categories(mvtec, out, *tiny_cli(tiny_config), *extra))
        assert code == 0
        with open(out / "metrics.csv") as f:
            assert [r["category"] for r in csv.DictReader(f)] == ["screw", "transistor", "mean"]
        tag = {"anoclip": "TF-1IMG", "dual": "PAIR", "mutual": "BATCH"}[mode]
        assert f"**{tag}+TTA({tta})**" in (out / "metrics.md").read_text()


def test_detect_cli_mutual(tiny_config, set_of_images, tmp_path):
    out = tmp_path / "o"
    options = ["--object", "screw", "--out", str(out), *tiny_cli(tiny_config), "--mode",
               "mutual", "--refs", "1", "--no-tta", "--set", "image_score=cls"]  # fmt: skip
    code = main(["detect", *set_of_images[:3], *options])
    assert code == 0
    with open(out / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
