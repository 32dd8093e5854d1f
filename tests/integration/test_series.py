"""Sets whose images repeat (issue 20) on real EfficientNet-Lite0 features: re-exposures of
the same magnetic tiles are noted near-identical, with one warning, run.json's record and the
report's banner; distinct transistors are not."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from anoclip.extras import embedded_weights

from ..conftest import MVTEC, SHARED, need
from .test_faults import run_cli

WEIGHTS = embedded_weights("timm:tf_efficientnet_lite0")
TILES = SHARED / "data" / "magnetic_tile"
REAL = ["--visual-backbone", "timm:tf_efficientnet_lite0", "--set", "fusion=visual"]
pytestmark = pytest.mark.skipif(WEIGHTS is None, reason="efficientnet-lite0 weights absent")


def tile_series(n: int = 12) -> list[Path]:
    """The first `n` blowhole images by capture number: a few tiles, each under its three
    exposures (expN_num_ID: one tile's captures have nearby numbers)."""
    files = sorted(need(TILES / "blowhole").glob("*.jpg"),
                   key=lambda p: int(re.search(r"_num_(\d+)", p.name).group(1)))  # fmt: skip
    return files[:n]


def test_re_exposed_tiles_warn_once_and_are_recorded_and_marked(tmp_path):
    images = tile_series()
    out = tmp_path / "run"
    res = run_cli("detect", *images, "--object", "tile", "--mode", "mutual", "--refs", "5",
                  "--out", out, *REAL)  # fmt: skip
    assert res.returncode == 0, res.stderr
    said = [ln for ln in res.stderr.splitlines() if "near-identical images in the set" in ln]
    assert len(said) == 1 and "--normal" in said[0]
    info = json.loads((out / "run.json").read_text())
    near = info["near_identical"]
    assert near["untrusted"] and near["share"] >= 0.75 and len(near["images"]) >= 9
    page = (out / "report.html").read_text()
    assert 'id="series-warning"' in page and page.count('data-near="1"') == len(near["images"])


def test_distinct_transistors_are_not_noted():
    from anoclip import Detector

    images = sorted(need(MVTEC / "transistor/test").glob("*/*.png"))[::8][:12]
    det = Detector(device="cpu", visual_backbone="timm:tf_efficientnet_lite0",
                   visual_pretrained=WEIGHTS, fusion="visual")  # fmt: skip
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        preds = det.predict([str(p) for p in images], "transistor", mode="mutual", refs=5)
    noted = sum("near_identical" in p.notes for p in preds)
    assert noted < len(preds) / 2  # natural neighbours are not series
    assert not [w for w in seen if "near-identical" in str(w.message)]
