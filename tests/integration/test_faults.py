"""Bad inputs and interruptions, end to end through the `anoclip` command line.

Every case: the exit code, one `anoclip: error:` (or warning) line and no traceback, and
nothing lost or mixed on disk.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..conftest import REPO, TINY_SEED0, need, tiny_cli

FAST = ["--set", "tta_steps=1", "--set", "image_score=cls", "--no-overlay"]


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "anoclip", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, timeout=timeout,
    )  # fmt: skip


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec: give the child the default disposition, as an interactive user's would have.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "anoclip", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=_default_sigint,
    )  # fmt: skip


def one_line_error(res, code=2, words=""):
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("anoclip: error:")]
    assert len(errors) == 1 and words in errors[0], res.stderr
    return errors[0]


def folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def images(tmp_path_factory, mvtec):
    folder = tmp_path_factory.mktemp("faults_in")
    for name in ("000.png", "001.png", "002.png", "003.png"):
        shutil.copy(mvtec / "screw/test/scratch_head" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, images, tiny_config):
    out = tmp_path_factory.mktemp("faults") / "run"
    res = run_cli("detect", images, "--object", "screw", "--out", out, *tiny_cli(tiny_config),
                  *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out


def detect(images, out, config, *extra):
    return run_cli("detect", images, "--object", "screw", "--out", out, *tiny_cli(config), *FAST,
                   *extra)  # fmt: skip


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--mode", "mutual", "--refs", "0"], "--refs '0'"),
        (["--refs", "abc"], "--refs 'abc'"),
        (["--object", ""], "--object ''"),
        (["--set", "fusion=nope"], "fusion='nope'"),
        ([], "earlier run; pass --resume"),
    ],
)
def test_usage_error_leaves_an_earlier_result_untouched(earlier_run, images, tiny_config,
                                                        extra, words):  # fmt: skip
    before = folder_hash(earlier_run)
    res = detect(images, earlier_run, tiny_config, *extra)
    one_line_error(res, 2, words)
    assert folder_hash(earlier_run) == before


def test_resume_with_other_settings_is_refused(earlier_run, images, tiny_config):
    before = folder_hash(earlier_run)
    res = detect(images, earlier_run, tiny_config, "--resume", "--seed", "3", "--set",
                 "temperature=0.07")  # fmt: skip
    one_line_error(res, 2, "seed, settings.temperature")
    assert folder_hash(earlier_run) == before
    same = detect(images, earlier_run, tiny_config, "--resume", "--batch-size", "1")
    assert same.returncode == 0 and "skipped 4 already done" in same.stderr
    with open(earlier_run / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_overwrite_replaces_an_earlier_result(earlier_run, images, tiny_config, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(earlier_run, copy)
    (copy / "maps" / "stale.npy").write_bytes(b"x")
    res = detect(images.joinpath("000.png"), copy, tiny_config, "--overwrite")
    assert res.returncode == 0, res.stderr
    with open(copy / "scores.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["000"]
    assert sorted(p.name for p in (copy / "maps").iterdir()) == ["000.npy"]


def test_output_that_is_a_file_or_not_writable(images, tiny_config, tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    started = time.perf_counter()
    one_line_error(detect(images, target, tiny_config), 2, "is an existing file")
    one_line_error(detect(images, "/proc/anoclip-out", tiny_config), 2, "cannot write there")
    assert time.perf_counter() - started < 60  # refused before the model loads
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        one_line_error(detect(images, ro / "out", tiny_config), 2, "cannot write there")


def test_corrupt_file_is_listed_and_the_rest_run(images, tiny_config, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(images, folder)
    (folder / "zzz.png").write_bytes((folder / "000.png").read_bytes()[:3000])
    res = detect(folder, tmp_path / "out", tiny_config)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "anoclip: warning: cannot read" in res.stderr
    with open(tmp_path / "out" / "errors.csv") as f:
        assert [Path(r["source"]).name for r in csv.DictReader(f)] == ["zzz.png"]


def test_wrong_checkpoints_are_one_line(images, tiny_config, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    base = ["detect", images, "--object", "screw", "--out", tmp_path / "o"]
    line = one_line_error(run_cli(*base, "--model", "ViT-B-16", "--pretrained", junk), 2)
    assert "not a usable checkpoint" in line and "will likely succeed" not in line
    line = one_line_error(run_cli(*base, "--model", tiny_config, "--pretrained", junk), 2)
    assert "not a usable checkpoint" in line
    seed0 = need(TINY_SEED0)
    line = one_line_error(run_cli(*base, "--model", "ViT-B-16", "--pretrained", seed0), 2)
    assert "not a usable checkpoint" in line and "pos_embed width changed" not in line


def test_random_weights_are_the_same_in_two_processes(images, tiny_config, tmp_path):
    a = detect(images, tmp_path / "a", tiny_config, "--seed", "7")
    b = detect(images, tmp_path / "b", tiny_config, "--seed", "7")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert (tmp_path / "a/scores.csv").read_bytes() == (tmp_path / "b/scores.csv").read_bytes()
    for m in (tmp_path / "a/maps").glob("*.npy"):
        assert m.read_bytes() == (tmp_path / "b/maps" / m.name).read_bytes()
    detect(images, tmp_path / "c", tiny_config, "--seed", "8")
    assert (tmp_path / "a/scores.csv").read_bytes() != (tmp_path / "c/scores.csv").read_bytes()


def test_sigint_during_start_up(images, tiny_config, tmp_path):
    proc = start_cli("detect", images, "--object", "screw", "--out", tmp_path / "o",
                     *tiny_cli(tiny_config))  # fmt: skip
    # inside main(), importing torch / loading the model: a fixed sleep could land before
    # the interpreter has started (a loaded CI machine), where any Python program shows
    # KeyboardInterrupt's traceback
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if "libtorch" in maps.read_text():
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "anoclip: interrupted" in err


def test_sigint_mid_run_keeps_finished_results(tiny_config, mvtec, tmp_path):
    out = tmp_path / "o"
    proc = start_cli("detect", mvtec / "screw/test/scratch_head", "--object", "screw", "--out",
                     out, *tiny_cli(tiny_config), "--batch-size", "2")  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        rows = (
            (out / "scores.csv").read_text().splitlines() if (out / "scores.csv").exists() else []
        )
        if len(rows) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert 2 <= len(rows) < 24
    for row in rows:  # every logged row has its map on disk (default --max-map-side 512)
        assert np.load(out / "maps" / f"{row['name']}.npy").shape == (
            512,
            512,
        )  # the default --max-map-side
    again = run_cli("detect", mvtec / "screw/test/scratch_head", "--object", "screw", "--out",
                    out, *tiny_cli(tiny_config), "--resume")  # fmt: skip
    assert again.returncode == 0 and f"skipped {len(rows)} already done" in again.stderr


def test_huge_image_caps_the_written_map(tiny_config, tmp_path):
    big = tmp_path / "in" / "big.png"
    big.parent.mkdir()
    Image.new("L", (6000, 3000), 128).save(big)
    res = detect(big.parent, tmp_path / "o", tiny_config, "--max-map-side", "512")
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "o/maps/big.npy").shape == (256, 512)
    with open(tmp_path / "o/scores.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["width"], row["height"]) == ("6000", "3000")
    info = json.loads((tmp_path / "o/run.json").read_text())
    assert info["fingerprint"]["max_map_side"] == 512 and info["modes_used"] == ["anoclip"]


def test_mode_fallback_is_a_one_line_warning_and_recorded(tiny_config, images, tmp_path):
    res = detect(images / "000.png", tmp_path / "o", tiny_config, "--mode", "dual")
    assert res.returncode == 0 and "Traceback" not in res.stderr
    warns = [x for x in res.stderr.splitlines() if "needs at least two images" in x]
    assert len(warns) == 1 and warns[0].startswith("anoclip: warning: dual/mutual")
    assert "anoclip: warning: anoclip:" not in res.stderr
    info = json.loads((tmp_path / "o/run.json").read_text())
    assert info["mode"] == "dual" and info["modes_used"] == ["anoclip"]


def test_help_and_usage_errors_do_not_import_torch(tmp_path):
    code = (
        "import sys\nfrom anoclip.cli import main\n"
        f"rc = main(['detect', {str(tmp_path)!r}, '--object', 'x', '--out', 'o'])\n"
        "print(rc, 'torch' in sys.modules, 'open_clip' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.stdout.split() == ["2", "False", "False"], res.stderr
    started = time.perf_counter()
    assert run_cli("--help").returncode == 0
    assert time.perf_counter() - started < 10
