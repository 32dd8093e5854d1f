"""`anoclip detect` end to end on real MVTec screws, plus the failure paths."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from anoclip.cli import main

from ..conftest import REPO, tiny_cli


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "anoclip", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mvtec):
    folder = tmp_path_factory.mktemp("in")
    for name in ("000.png", "001.png", "002.png"):
        shutil.copy(mvtec / "screw/test/scratch_head" / name, folder / name)
    (folder / "corrupt.png").write_bytes((folder / "000.png").read_bytes()[:5000])
    (folder / "readme.txt").write_text("not scanned: no image suffix")
    # a 16-bit grey PNG and an RGBA image work too
    deep = np.asarray(Image.open(folder / "001.png"), dtype=np.uint16) * 257
    Image.fromarray(deep).save(folder / "deep16.png")
    Image.open(folder / "002.png").convert("RGBA").save(folder / "alpha.png")
    return folder


def test_detect_end_to_end(inputs, tiny_config, tmp_path):
    out = tmp_path / "out"
    common = [inputs, "--object", "screw", "--out", out, *tiny_cli(tiny_config)]
    res = run_cli("detect", *common, "--batch-size", "2")
    assert res.returncode == 1, res.stderr  # one unreadable file
    assert "RANDOM weights" in res.stderr
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for row in rows:
        assert 0 <= float(row["score"]) <= 1
    with open(out / "errors.csv") as f:
        errors = list(csv.DictReader(f))
    assert len(errors) == 1 and errors[0]["source"].endswith("corrupt.png")
    assert "truncated" in errors[0]["reason"]
    for stem in ("000", "001", "002", "deep16", "alpha"):
        m = np.load(out / "maps" / f"{stem}.npy")  # default: at most 512 px, float16
        assert m.shape == (512, 512) and m.dtype == np.float16
        assert Image.open(out / "maps" / f"{stem}.png").size == (512, 512)
        size = (out / "maps" / f"{stem}.npy").stat().st_size
        size += (out / "maps" / f"{stem}.png").stat().st_size
        assert size < 2**20  # under 1 MB per 1024² image
    assert (out / "run.json").exists()

    # --resume skips what is done; the corrupt file is retried and fails again
    again = run_cli("detect", *common, "--resume", "--batch-size", "3")  # runtime may change
    assert again.returncode == 1 and "skipped 5 already done" in again.stderr
    # but resuming with other numerics is refused, naming the field
    mixed = run_cli("detect", *common, "--resume", "--no-tta")
    assert mixed.returncode == 2 and "different settings (tta)" in mixed.stderr
    with open(out / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_clean_run_exit_zero_and_no_errors_file(mvtec, tiny_config, tmp_path):
    out = tmp_path / "o"
    img = mvtec / "screw/test/good/000.png"
    code = main(
        [
            "detect",
            str(img),
            "--object",
            "screw",
            "--out",
            str(out),
            "--model",
            str(tiny_config),
            "--pretrained",
            "none",
            "--set",
            "tta_steps=1",
            "--full-maps",
        ]
    )
    assert code == 0
    assert not (out / "errors.csv").exists()
    full = np.load(out / "maps" / "000.npy")  # --full-maps: float32 at the image's size
    assert full.shape == (1024, 1024) and full.dtype == np.float32


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "ViT-B-99"], "unknown model 'ViT-B-99'"),
        (["--set", "temprature=1"], "--set 'temprature=1'"),
    ],
)
def test_one_line_errors(tmp_path, tiny_config, extra, message, mvtec, capsys):
    img = mvtec / "screw/test/good/000.png"
    args = [
        "detect",
        str(img),
        "--object",
        "screw",
        "--out",
        str(tmp_path),
        "--pretrained",
        "none",
        "--model",
        str(tiny_config),
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("anoclip: error:") and message in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_empty_folder_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        main(["detect", str(tmp_path / "empty"), "--object", "x", "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("anoclip: error: no images found") and "\n" not in err


def test_unknown_setting_names_the_nearest_keys(tmp_path, capsys):
    args = ["detect", str(tmp_path), "--object", "screw", "--out", str(tmp_path / "o")]
    assert main([*args, "--set", "temperatur=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anoclip: error: --set 'temperatur=1'") and "\n" not in err
    assert "temperature" in err and len(err) < 200
