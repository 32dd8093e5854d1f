"""Listing inputs and naming outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from anoclip.data.listing import expand_inputs, list_inputs, output_names
from anoclip.errors import AnoclipWarning, UsageError

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


def _run_folder(folder: Path, images: int = 2) -> Path:
    """An anoclip result folder: a run.json as anoclip writes it, overlays and masks."""
    for sub in ("maps", "masks"):
        (folder / sub).mkdir(parents=True)
        for i in range(images):
            save(folder / sub, f"00{i}.png", Image.new("RGB", (4, 4)))
    (folder / "run.json").write_text(json.dumps({"anoclip": "0.1", "fingerprint": {}}))
    return folder


def test_the_output_folder_inside_the_input_is_skipped_and_reported(tmp_path):
    for i in range(3):
        save(tmp_path, f"00{i}.png", Image.new("RGB", (4, 4)))
    out = tmp_path / "res"
    out.mkdir()
    save(out, "stray.png", Image.new("RGB", (4, 4)))  # no run.json yet: still the output
    listing = list_inputs([tmp_path], out=out)
    assert [p.name for p in listing.paths] == ["000.png", "001.png", "002.png"]
    assert listing.skipped == [out]
    with pytest.warns(AnoclipWarning, match="not scanning 1 folder.*res") as caught:
        assert expand_inputs([tmp_path], out=out) == listing.paths
    assert len(caught) == 1


def test_a_second_run_into_the_input_folder_scores_the_same_images(tmp_path):
    """--out equal to the input folder: its maps/ and masks/ are skipped, its images kept
    (names unchanged: 000, not same__000)."""
    for i in range(3):
        save(tmp_path, f"00{i}.png", Image.new("RGB", (4, 4)))
    _run_folder(tmp_path)
    for out in (tmp_path, None):  # named as --out, or known by its run.json
        listing = list_inputs([tmp_path], out=out)
        assert [p.name for p in listing.paths] == ["000.png", "001.png", "002.png"]
        assert output_names(listing.paths) == ["000", "001", "002"]
        assert sorted(p.name for p in listing.skipped) == ["maps", "masks"]


def test_folders_of_earlier_runs_are_skipped_by_their_run_json(tmp_path):
    (tmp_path / "good").mkdir()
    save(tmp_path / "good", "000.png", Image.new("RGB", (4, 4)))
    _run_folder(tmp_path / "old")
    foreign = tmp_path / "other"  # a run.json that is not anoclip's: scanned as usual
    (foreign / "maps").mkdir(parents=True)
    save(foreign / "maps", "000.png", Image.new("RGB", (4, 4)))
    (foreign / "run.json").write_text(json.dumps({"steps": 3}))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    listing = list_inputs([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in listing.paths] == [
        "good/000.png",
        "other/maps/000.png",
    ]
    assert listing.skipped == [tmp_path / "old" / "maps", tmp_path / "old" / "masks"]


def test_explicit_inputs_inside_anoclip_results_are_refused(tmp_path):
    out = _run_folder(tmp_path / "res")
    save(out, "photo.png", Image.new("RGB", (4, 4)))
    with pytest.raises(UsageError, match="inside the output folder"):
        list_inputs([out / "maps" / "000.png"], out=out)
    with pytest.raises(UsageError, match="inside the output folder"):
        list_inputs([out / "photo.png"], out=out)
    with pytest.raises(UsageError, match="inside the output folder"):
        list_inputs([out / "masks"], out=out)
    with pytest.raises(UsageError, match="anoclip's own results"):  # another run's overlay
        list_inputs([out / "maps" / "000.png"], out=tmp_path / "new")
    assert list_inputs([out / "photo.png"]).paths == [out / "photo.png"]


def test_the_same_file_twice_is_listed_once_with_one_notice(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = save(tmp_path / "one", "000.png", Image.new("RGB", (4, 4)))
    two = save(tmp_path / "two", "000.png", Image.new("RGB", (4, 4)))
    again = tmp_path / "one" / ".." / "one" / "000.png"
    listing = list_inputs([tmp_path, one, again, two])
    assert listing.paths == [one, two] and listing.duplicates == [one, again, two]
    assert output_names(listing.paths) == ["one__000", "two__000"]
    with pytest.warns(AnoclipWarning, match=r"^3 duplicate input\(s\) dropped") as caught:
        expand_inputs([tmp_path, one, again, two])
    assert len(caught) == 1
    assert list_inputs([one, one]).paths == [one]
