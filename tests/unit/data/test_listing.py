"""Listing inputs and naming outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from anoclip.data.listing import expand_inputs, output_names

from .test_images import save


def test_expand_inputs_and_names(tmp_path):
    for sub in ("good", "crack"):
        (tmp_path / sub).mkdir()
        for i in range(2):
            save(tmp_path / sub, f"00{i}.png", Image.new("RGB", (4, 4)))
    (tmp_path / "good" / "notes.txt").write_text("x")
    paths = expand_inputs([tmp_path])
    assert len(paths) == 4 and all(p.suffix == ".png" for p in paths)
    names = output_names(paths)
    assert names == ["crack__000", "crack__001", "good__000", "good__001"]
    assert output_names(paths[:2]) == ["000", "001"]
    with pytest.raises(FileNotFoundError):
        expand_inputs([tmp_path / "missing"])


def test_output_names_prefix_only_clashing_stems():
    paths = [Path("a/b/good/000.png"), Path("a/b/crack/000.png"), Path("a/b/crack/001.png"),
             Path("x/y/z/001.png"), Path("a/b/crack/001.png"), Path("q/.hidden.png")]  # fmt: skip
    names = output_names(paths)
    assert names == ["good__000", "crack__000", "crack__001", "z__001", "crack__001~2", "hidden"]
    assert output_names([Path("only/one.png")]) == ["one"]
