"""Reliability, round 2 (issue 21), end to end through the `anoclip` command line: the
tool's own results are not inputs, a file given twice is scored once, unreadable weight
files never pass on torch's unsafe advice, and a huge JPEG is scored with one warning."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ..conftest import tiny_cli
from .test_faults import FAST, one_line_error, run_cli

UNSAFE = ("weights_only", "arbitrary code", "will likely succeed")


@pytest.fixture
def folder(tmp_path, mvtec):
    """Four screw images in a folder of their own."""
    root = tmp_path / "in"
    root.mkdir()
    for name in ("000.png", "001.png", "002.png", "003.png"):
        shutil.copy(mvtec / "screw/test/scratch_head" / name, root / name)
    return root


def rows(out) -> list[dict[str, str]]:
    with open(out / "scores.csv", newline="") as f:
        return list(csv.DictReader(f))


def warnings_of(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("anoclip: warning:")]


@pytest.mark.parametrize("where", ["same", "inside"])
def test_a_second_run_does_not_score_its_own_results(folder, tiny_config, where):
    """--out equal to the input folder, or inside it: the second run scores the same four
    images under the same names, to the same unsupervised threshold."""
    out = folder if where == "same" else folder / "res"
    options = ["--object", "screw", "--out", out, *tiny_cli(tiny_config), *FAST]
    args = ["detect", folder, *options]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    names = [r["name"] for r in rows(out)]
    threshold = json.loads((out / "threshold.json").read_text())["image_threshold"]
    (out / "maps" / "extra.png").write_bytes((folder / "000.png").read_bytes())  # an overlay
    second = run_cli(*args, "--overwrite")
    assert second.returncode == 0, second.stderr
    assert names == ["000", "001", "002", "003"]
    assert [r["name"] for r in rows(out)] == names
    assert json.loads((out / "threshold.json").read_text())["image_threshold"] == threshold
    skipped = [w for w in warnings_of(second) if "anoclip's own results" in w]
    assert len(skipped) == 1 and "maps" in skipped[0], second.stderr
    (out / "maps" / "extra.png").write_bytes((folder / "000.png").read_bytes())
    line = one_line_error(run_cli("detect", out / "maps" / "extra.png", *options, "--resume"))
    assert "inside the output folder" in line  # an overlay named as an input: refused


def test_the_same_file_twice_is_scored_once_under_its_name(folder, tiny_config, tmp_path):
    one = folder / "000.png"
    out = tmp_path / "out"
    res = run_cli("detect", one, folder, one, "--object", "screw", "--out", out,
                  *tiny_cli(tiny_config), *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert [(r["source"], r["name"]) for r in rows(out)] == [
        (str(folder / f"00{i}.png"), f"00{i}") for i in range(4)
    ]
    notices = [w for w in warnings_of(res) if "duplicate" in w]
    assert len(notices) == 1 and "2 duplicate input(s) dropped" in notices[0], res.stderr


def test_random_bytes_for_weights_or_bank_say_why_without_unsafe_advice(
    folder, tiny_config, tmp_path
):
    pytest.importorskip("timm")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    base = ["detect", folder, "--object", "screw", "--out", tmp_path / "o",
            *tiny_cli(tiny_config), *FAST]  # fmt: skip
    cases = [
        (["--mode", "dual", "--visual-backbone", "timm:tf_efficientnet_lite0",
          "--visual-pretrained", junk], "cannot read visual checkpoint"),
        (["--bank", junk], "not an anoclip bank"),
        (["--pretrained", junk], "not a usable checkpoint"),
    ]  # fmt: skip
    for extra, words in cases:
        res = run_cli(*base, *extra)
        line = one_line_error(res, 2, words)
        assert "not a PyTorch file" in line, line
        assert not any(w in res.stderr for w in UNSAFE), res.stderr


def test_a_225_megapixel_jpeg_is_scored_with_one_warning(tiny_config, tmp_path):
    """PIL calls it a decompression bomb; anoclip decodes it (preprocessing, overlay and
    report each decode it) and says so once. Above ANOCLIP_MAX_MEGAPIXELS: refused."""
    huge = tmp_path / "huge.jpg"
    Image.new("L", (15000, 15000), 90).save(huge, quality=50)
    out = tmp_path / "out"
    res = run_cli(
        "detect",
        huge,
        "--object",
        "screw",
        "--out",
        out,
        *tiny_cli(tiny_config),
        "--set",
        "tta_steps=1",
        "--set",
        "image_score=cls",
        "--max-map-side",
        "256",
    )
    assert res.returncode == 0, res.stderr
    (row,) = rows(out)
    assert (row["width"], row["height"]) == ("15000", "15000")
    huge_notes = [w for w in warnings_of(res) if "megapixels" in w]
    assert len(huge_notes) == 1 and "225 megapixels" in huge_notes[0], res.stderr
    assert (out / "maps" / "huge.png").is_file()
