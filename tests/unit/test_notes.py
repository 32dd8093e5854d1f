"""The doubt notes' run-level warnings: the series warning's advice depends on whether the
set was scored with a bank of known-good images (it never asks a banked run for one)."""

from __future__ import annotations

import warnings

import torch

from anoclip.cli.verdicts import doubts
from anoclip.detector import Detector, doubt_messages
from anoclip.errors import AnoclipWarning
from anoclip.notes import series_message
from anoclip.records import Sample, Scored


def test_series_message_asks_for_a_bank_only_without_one():
    plain = series_message(6, 10)
    banked = series_message(6, 10, banked=True)
    assert plain.startswith("6 of 10 images (60%) have near-identical images")
    assert plain.endswith("give known-good images as a bank (--normal DIR)")
    assert "--normal" not in banked and "already backs every score" in banked
    assert "--mode anoclip" in banked and banked.startswith("6 of 10 images (60%)")


def test_doubt_messages_pass_the_bank_on():
    noted = {"near_identical": 5, "unfamiliar": 1}  # 5 of 10: at the bound
    plain = doubt_messages(noted, 10)
    banked = doubt_messages(noted, 10, banked=True)
    assert len(plain) == len(banked) == 2
    assert "--normal DIR" in plain[1] and "--normal" not in banked[1]
    assert doubt_messages({"near_identical": 4}, 10, banked=True) == []  # 40 %: trusted


def _fake_scored(n: int, notes: tuple[str, ...]):
    def iter_scored(images, object_name, tta=True, **options):
        for i in range(n):
            sample = Sample(i, f"img{i}", torch.zeros(1, 3, 4, 4), None, (4, 4))
            yield Scored(sample, 0.1 * i, torch.zeros(4, 4), "mutual", notes)

    return iter_scored


def test_iter_predict_warns_a_banked_set_without_asking_for_the_bank():
    det = Detector.__new__(Detector)  # no model: the scorer is faked
    det.iter_scored = _fake_scored(4, ("near_identical",))
    for bank, wanted, unwanted in (
        (object(), "--mode anoclip", "--normal"),
        (None, "--normal DIR", "already backs"),
    ):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            preds = list(det.iter_predict(["a", "b", "c", "d"], "x", bank=bank))
        said = [str(w.message) for w in seen if issubclass(w.category, AnoclipWarning)]
        assert len(preds) == 4 and len(said) == 1
        assert wanted in said[0] and unwanted not in said[0]


def test_run_json_doubts_list_global_changes():
    noted = {"a.png": ("global_change",), "b.png": ("unfamiliar", "global_change"), "c.png": ("x",)}
    out = doubts(noted, 5)
    assert out["global_change"] == ["a.png", "b.png"] and out["unfamiliar"] == ["b.png"]
    assert "global_change" not in doubts({"c.png": ("unfamiliar",)}, 5)
