"""Refusals that leave no trace: every check runs before the --out folder is made.

What needs no model is refused before torch is imported (a missing checkpoint or model
config file, an unknown open_clip model name, a view engine whose extra is missing, a
--save-bank folder that does not exist); what needs it (CUDA present, a bank file that
reads as one) right after the model stack loads. Either way: exit code 2, one
`anoclip: error:` line, and no --out folder.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import torch

from anoclip.results.writer import SCORE_COLUMNS

from ..conftest import REPO, tiny_cli
from .test_faults import FAST, one_line_error, run_cli


def run_main(*args, block=()):
    """`anoclip ARGS` in a fresh interpreter with the modules in `block` unimportable (as
    if their extra were not installed); returns (the process, whether torch was imported)."""
    code = (
        "import sys\n"
        f"for name in {list(block)!r}:\n"
        "    sys.modules[name] = None\n"
        "from anoclip.cli import main\n"
        f"rc = main({list(map(str, args))!r})\n"
        "print('torch' in sys.modules)\n"
        "sys.exit(rc)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    return res, res.stdout.strip().endswith("True")


@pytest.fixture
def image(mvtec):
    return mvtec / "screw/test/good/000.png"


@pytest.mark.parametrize(
    "extra,block,words",
    [
        (["--pretrained", "/no/such.pt"], (), "checkpoint file not found: /no/such.pt"),
        (["--model", "ViT-B-99"], (), "unknown model 'ViT-B-99'"),
        (["--model", "/no/such-model.json"], (), "model config file not found"),
        (["--view-engine", "onnxruntime"], ("onnxruntime",), "pip install anoclip[export]"),
        (["--bank-images", "IMAGE", "--save-bank", "/no/such/bank.pt"], (), "no such folder"),
    ],
)
def test_refused_before_torch_and_nothing_written(image, tiny_config, tmp_path, extra, block,
                                                  words):  # fmt: skip
    out = tmp_path / "out"
    extra = [str(image) if a == "IMAGE" else a for a in extra]
    res, torch_loaded = run_main("detect", image, "--object", "screw", "--out", out,
                                 *tiny_cli(tiny_config), *extra, block=block)  # fmt: skip
    one_line_error(res, 2, words)
    assert not torch_loaded
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_cuda_without_cuda_leaves_no_folder(image, tiny_config, tmp_path):
    out = tmp_path / "out"
    res = run_cli("detect", image, "--object", "screw", "--out", out, *tiny_cli(tiny_config),
                  "--device", "cuda")  # fmt: skip
    one_line_error(res, 2, "CUDA is not available")
    assert not out.exists()


def test_bad_bank_file_leaves_no_folder(image, tiny_config, tmp_path):
    out = tmp_path / "out"
    base = ["detect", image, "--object", "screw", "--out", out, *tiny_cli(tiny_config)]
    one_line_error(run_cli(*base, "--bank", tmp_path / "missing.pt"), 2, "no such file")
    assert not out.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a bank")
    one_line_error(run_cli(*base, "--bank", junk), 2, "is not an anoclip bank")
    assert not out.exists()


def test_a_header_only_folder_is_no_earlier_result(image, tiny_config, tmp_path):
    """What a run stopped before its first image leaves (run.json, a header-only
    scores.csv) holds no results: a new run goes into it without --overwrite."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.csv").write_text(",".join(SCORE_COLUMNS) + "\n")
    (out / "run.json").write_text(json.dumps({"fingerprint": {"seed": 99}}))
    res = run_cli("detect", image, "--object", "screw", "--out", out, *tiny_cli(tiny_config),
                  *FAST)  # fmt: skip
    assert res.returncode == 0, res.stderr
    with open(out / "scores.csv") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["000"]
