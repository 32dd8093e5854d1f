"""The public Detector API: shapes, ranges, sources, inputs and settings."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anoclip import Detector, ImageDecodeError, Prediction


@pytest.fixture(scope="module")
def det(tiny_backbone):
    return Detector(backbone=tiny_backbone, tta_steps=2)


def test_map_size_equals_input_size(det):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (300, 200, 3), dtype=np.uint8),  # portrait
        Image.fromarray(rng.integers(0, 256, (64, 500), dtype=np.uint8)),  # wide, grey
        rng.random((240, 240)).astype(np.float32),
    ]
    preds = det.predict(images, "bottle")
    assert [p.anomaly_map.shape for p in preds] == [(300, 200), (64, 500), (240, 240)]
    for p in preds:
        assert isinstance(p, Prediction) and p.anomaly_map.dtype == np.float32
        assert 0.0 <= p.anomaly_map.min() <= p.anomaly_map.max() <= 1.0
        assert 0.0 <= p.score <= 1.0
    assert [p.source for p in preds] == ["0", "1", "2"]


def test_two_tile_mode_keeps_aspect(tiny_backbone):
    det = Detector(backbone=tiny_backbone, tiling="auto", tta_steps=1)
    img = np.random.default_rng(1).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    sample = det.prepare(img)
    assert sample.tiles.shape == (2, 3, 240, 240) and sample.layout.size == (240, 400)
    pred = det.predict(img, "pcb")[0]
    assert pred.anomaly_map.shape == (300, 500)


def test_paths_sources_and_decode_errors(det, mvtec, tmp_path):
    good = str(mvtec / "screw/test/good/000.png")
    preds = det.predict([good], "screw")
    assert preds[0].source == good and preds[0].anomaly_map.shape == (1024, 1024)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="broken.png: empty file"):
        det.predict([good, str(bad)], "screw")
    items = list(det.iter_predict([good, str(bad)], "screw"))
    assert [type(i).__name__ for i in items] == ["Prediction", "Failure"]


def test_settings_overrides(tiny_backbone):
    with pytest.raises(TypeError, match="unknown setting"):
        Detector(backbone=tiny_backbone, temprature=0.07)
    with pytest.raises(ValueError, match="invalid setting"):
        Detector(backbone=tiny_backbone, temperature=0)
    with pytest.raises(ValueError, match="outside"):
        Detector(backbone=tiny_backbone, token_mode="multilayer", layers=(3, 13))
    det = Detector(backbone=tiny_backbone, temperature=0.07, adapter="linear")
    assert det.settings.temperature == 0.07 and det.settings.adapter == "linear"


def test_multilayer_mode_averages_per_layer_maps(tiny_backbone):
    img = np.random.default_rng(2).integers(0, 256, (240, 240, 3), dtype=np.uint8)
    kw = dict(backbone=tiny_backbone, image_score="cls")
    maps = {
        layer: Detector(**kw, token_mode="multilayer", layers=(layer,)).predict(img, "x", False)[0]
        for layer in (6, 12)
    }
    both = Detector(**kw, token_mode="multilayer", layers=(6, 12)).predict(img, "x", False)[0]
    mean = (maps[6].anomaly_map + maps[12].anomaly_map) / 2
    assert np.abs(both.anomaly_map - mean).max() < 1e-6
    assert np.abs(maps[6].anomaly_map - maps[12].anomaly_map).max() > 1e-6


def test_gaussian_sigma_smooths(tiny_backbone):
    img = np.random.default_rng(3).integers(0, 256, (240, 240, 3), dtype=np.uint8)
    kw = dict(backbone=tiny_backbone, image_score="cls")
    raw = Detector(**kw).predict(img, "x", tta=False)[0].anomaly_map
    smooth = Detector(**kw, gaussian_sigma=4).predict(img, "x", tta=False)[0].anomaly_map
    assert smooth.std() < raw.std()
