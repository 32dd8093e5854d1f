"""Hints in error messages: close names only."""

from __future__ import annotations

from anoclip.errors import close_names

KNOWN = ["ViT-B-16", "ViT-B-32", "ViT-e-14", "ViT-g-14", "ViT-B-16-plus-240", "RN50"]


def test_close_names_suggest_only_close_matches():
    assert close_names("ViT-Nope-99", KNOWN) == []
    assert close_names("vit_b_16", KNOWN)[0] == "ViT-B-16"
    assert close_names("ViT-B-16-plus-24", KNOWN)[0] == "ViT-B-16-plus-240"
    assert close_names("rn50", KNOWN) == ["RN50"]
    assert len(close_names("ViT-B-1", KNOWN, n=2)) == 2
