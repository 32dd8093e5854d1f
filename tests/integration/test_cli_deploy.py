"""`anoclip export`, `anoclip detect --engine FILE` and `anoclip detect --ray` end to end.

The reference of every score is the PyTorch CLI run (`anoclip detect --tta none --set
image_score=cls`), not the code under test. The refusals need neither onnxruntime nor Ray:
they happen before torch loads, and leave --out unwritten.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from anoclip.cli import main
from anoclip.settings import Settings, differing_fields

from ..conftest import tiny_cli

SCREW = ("good/000.png", "scratch_head/000.png", "thread_top/001.png", "manipulated_front/002.png")
ENGINE_TOL = 1e-4
RAY_TOL = 1e-6
SHARP = ["--set", "temperature=0.07"]  # spreads the tiny random model's scores
CLS = ["--tta", "none", "--set", "image_score=cls", *SHARP]  # what the exported file computes


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, mvtec) -> Path:
    """Four shared screw images (good and three defect types) in one folder."""
    folder = tmp_path_factory.mktemp("screws")
    for rel in SCREW:
        shutil.copy(mvtec / "screw" / "test" / rel, folder / rel.replace("/", "_"))
    return folder


def rows(out: Path) -> dict[str, dict]:
    with open(out / "scores.csv", newline="") as f:
        return {r["source"]: r for r in csv.DictReader(f)}


def assert_same_scores(got: Path, want: Path, tol: float, maps: bool = True) -> None:
    """scores.csv of two result folders: same sources, scores within `tol`; maps too."""
    a, b = rows(got), rows(want)
    assert sorted(a) == sorted(b) and len(a) == len(SCREW)
    for source, r in a.items():
        assert abs(float(r["score"]) - float(b[source]["score"])) <= tol, source
        assert (r["width"], r["height"]) == (b[source]["width"], b[source]["height"])
        if maps:
            m, w = (np.load(o / "maps" / f"{r['name']}.npy") for o in (got, want))
            assert m.shape == w.shape and np.abs(m - w).max() <= tol


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


# ----------------------------------------------------------------------------- refusals


@pytest.fixture
def fake_engine(tmp_path) -> Path:
    """An .onnx name with a valid sidecar (CLS score, default settings): enough for every
    refusal, which happens before the file is opened."""
    settings = dataclasses.asdict(dataclasses.replace(Settings(), image_score="cls"))
    meta = {
        "format": "anoclip-zero-shot-scorer", "object": "screw", "prompt_name": "screw",
        "class_names": "clean", "views": 1, "engine": "onnx",
        "fingerprint": {"model": "m", "settings": json.loads(json.dumps(settings))},
    }  # fmt: skip
    (tmp_path / "screw.json").write_text(json.dumps(meta))
    (tmp_path / "screw.onnx").write_bytes(b"not a model")
    return tmp_path / "screw.onnx"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--mode", "dual"], "scores each image alone"),
        (["--tta", "noise"], "scores without TTA: drop --tta noise"),
        (["--set", "image_score=cls_aug22"], "exported with image_score=cls"),
        (["--set", "temperature=0.07"], "exported with temperature=1.0"),
        (["--model", "ViT-B-16"], "carries its own model"),
        (["--seed", "3"], "carries its own model"),
        (["--device", "cuda"], "runs on the CPU"),
        (["--ray"], "--engine and --ray exclude each other"),
        (["--object", "bottle"], "exported for object 'screw', not 'bottle'"),
    ],
)
def test_engine_refusals(fake_engine, mvtec, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    img = mvtec / "screw/test/good/000.png"
    args = ["detect", str(img), "--object", "screw", "--out", str(out), "--engine",
            str(fake_engine), *extra]  # fmt: skip
    assert main(args) == 2
    line = last_error(capsys)
    assert line.startswith("anoclip: error:") and message in line
    assert not out.exists()  # nothing written


def test_engine_file_checks(fake_engine, mvtec, tmp_path, capsys, monkeypatch):
    img = str(mvtec / "screw/test/good/000.png")
    base = ["detect", img, "--object", "screw", "--out", str(tmp_path / "out")]
    assert main([*base, "--engine", str(tmp_path / "missing.onnx")]) == 2
    assert "no such file" in last_error(capsys)
    assert main([*base, "--engine", str(fake_engine.with_suffix(".pt"))]) == 2
    assert "expected an exported .onnx or .xml" in last_error(capsys)
    (tmp_path / "screw.json").unlink()
    assert main([*base, "--engine", str(fake_engine)]) == 2
    assert "sidecar is missing" in last_error(capsys)
    assert not (tmp_path / "out").exists()


def test_missing_extras_name_them(fake_engine, mvtec, tmp_path, capsys, monkeypatch):
    """Without onnxruntime / onnx: one line naming `pip install anoclip[export]`."""
    img = str(mvtec / "screw/test/good/000.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    args = ["detect", img, "--object", "screw", "--out", str(tmp_path / "o"), "--engine"]
    assert main([*args, str(fake_engine), "--no-tta"]) == 2
    assert "pip install anoclip[export]" in last_error(capsys)
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", "--object", "screw", "--out", str(tmp_path / "s.onnx")]) == 2
    assert "'onnx': pip install anoclip[export]" in last_error(capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--out", "x.pt"], "name the file .onnx (ONNX) or .xml (OpenVINO)"),
        (["--format", "openvino"], "a --format openvino file must be named *.xml"),
        (["--views", "22", "--opset", "15"], "--opset >= 16"),
        (["--set", "image_score=cls_aug22"], "disagrees with --views 1"),
        (["--set", "tiling=two_tile"], "square inputs only"),
        (["--object", ""], "--object '': the object name is empty"),
    ],
)
def test_export_refusals(tmp_path, capsys, extra, message):
    args = ["export", "--object", "screw", "--out", str(tmp_path / "m" / "screw.onnx"), *extra]
    assert main(args) == 2
    assert message in last_error(capsys)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--actors", "2"], "--actors needs --ray"),
        (["--references", "REFS"], "--references needs --ray"),
        (["--ray", "--actors", "0"], "--actors 0: must be >= 1"),
        (["--ray", "--cpus-per-actor", "0"], "--cpus-per-actor 0.0: must be > 0"),
        (["--ray", "--mode", "dual"], "O(N²)"),
        (["--ray", "--mode", "mutual", "--refs", "2"], "Pass --references DIR"),
        (["--ray", "--references", "REFS"], "--references is for --mode dual or mutual"),
        (["--ray", "--mode", "dual", "--references", "REFS", "--normal", "REFS"],
         "calibrates in mode anoclip only"),
    ],
)  # fmt: skip
def test_ray_refusals_before_ray(inputs, tmp_path, capsys, extra, message):
    """Refused in the CLI before Ray (or torch) is imported; nothing written."""
    out = tmp_path / "out"
    extra = [str(inputs) if a == "REFS" else a for a in extra]
    assert main(["detect", str(inputs), "--object", "screw", "--out", str(out), *extra]) == 2
    assert message in last_error(capsys)
    assert not out.exists()


def test_ray_address_that_is_an_input(inputs, tmp_path, capsys):
    """`--ray DIR` takes DIR as the cluster address: refused, not tried as a host."""
    out = tmp_path / "out"
    img = str(inputs / "good_000.png")
    assert main(["detect", img, "--object", "screw", "--out", str(out), "--ray", str(inputs)]) == 2
    assert "put --ray after the inputs" in last_error(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def pytorch_cls(inputs, tiny_config, tmp_path_factory) -> Path:
    """The reference: the PyTorch CLI with what an exported file computes."""
    out = tmp_path_factory.mktemp("torch") / "out"
    args = ["detect", str(inputs), "--object", "screw", "--out", str(out), *CLS]
    assert main([*args, *tiny_cli(tiny_config)]) == 0
    return out


@pytest.fixture(scope="module")
def export_run(tiny_config, tmp_path_factory) -> tuple[Path, str]:
    """`anoclip export` of the tiny model: (the .onnx file, what it printed)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("export") / "screw.onnx"
    args = ["export", "--object", "screw", "--format", "onnx", "--out", str(path), *SHARP]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main([*args, *tiny_cli(tiny_config)]) == 0
    return path, err.getvalue()


@pytest.fixture(scope="module")
def exported(export_run) -> Path:
    return export_run[0]


@pytest.mark.slow
def test_export_writes_file_sidecar_helper(export_run):
    exported, printed = export_run
    assert exported.is_file() and exported.with_suffix(".json").is_file()
    assert (exported.parent / "anoclip_engine_helper.py").is_file()
    meta = json.loads(exported.with_suffix(".json").read_text())
    assert (meta["object"], meta["views"], meta["image_score"]) == ("screw", 1, "cls")
    assert meta["fingerprint"]["settings"]["temperature"] == 0.07
    delta = float(printed.split("max |Δ| = ")[1].split()[0])  # the self-check ran
    assert 0 <= delta <= 1e-4 and "anoclip_engine_helper.py" in printed


@pytest.mark.slow  # ~1 min: an export; the default suite runs --engine in test_export.py
def test_detect_engine_equals_pytorch_cls(exported, pytorch_cls, inputs, tmp_path, capsys):
    """--engine: the same outputs as PyTorch `--tta none --set image_score=cls`, scores and
    maps within 1e-4; run.json names the file; --resume checks the file's metadata."""
    out = tmp_path / "engine"
    base = ["detect", str(inputs), "--object", "screw", "--out", str(out), "--engine"]
    assert main([*base, str(exported)]) == 0
    assert "scored 4 image(s)" in capsys.readouterr().err
    assert_same_scores(out, pytorch_cls, ENGINE_TOL)
    for name in ("report.html", "threshold.json"):
        assert (out / name).is_file()
    assert len(list((out / "maps").glob("*.png"))) == len(SCREW)  # overlays as PyTorch
    info = json.loads((out / "run.json").read_text())
    assert info["engine"]["file"] == str(exported.resolve())
    assert info["engine"]["engine"] == "onnx" and info["tta"] == "none"
    assert info["fingerprint"]["engine"]["image_score"] == "cls"

    # the PyTorch run's fingerprint is the file's own, less the engine's metadata and the
    # model, recorded by config path there and by name in the file
    want = json.loads((pytorch_cls / "run.json").read_text())["fingerprint"]
    assert differing_fields(info["fingerprint"], want) == ["engine", "model"]

    # resume: everything done; a file with other metadata is refused, nothing rewritten
    assert main([*base, str(exported), "--resume", "--no-tta", *SHARP]) == 0  # the file's
    assert "skipped 4 already done" in capsys.readouterr().err
    other = tmp_path / "other" / "screw.onnx"
    other.parent.mkdir()
    shutil.copy(exported, other)
    meta = json.loads(exported.with_suffix(".json").read_text())
    other.with_suffix(".json").write_text(json.dumps({**meta, "opset": 99}))
    before = (out / "scores.csv").read_text()
    assert main([*base, str(other), "--resume"]) == 2
    assert "different settings (engine.opset)" in last_error(capsys)
    assert (out / "scores.csv").read_text() == before


# ----------------------------------------------------------------------------- ray


@pytest.mark.slow
def test_detect_ray_equals_local(pytorch_cls, inputs, tiny_config, tmp_path, capsys):
    """`--ray` (a local Ray, one actor): the same scores.csv and maps as the local run
    (≤ 1e-6), decided and reported; resume skips everything."""
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    out = tmp_path / "ray"
    args = ["detect", str(inputs), "--object", "screw", "--out", str(out), *CLS,
            *tiny_cli(tiny_config), "--ray", "--actors", "1", "--batch-size", "2"]  # fmt: skip
    assert main(args) == 0
    assert_same_scores(out, pytorch_cls, RAY_TOL)
    want = rows(pytorch_cls)
    for source, r in rows(out).items():  # the same unsupervised decisions
        assert r["decision"] == want[source]["decision"] != ""
    for name in ("report.html", "threshold.json", "scores.parquet", "run.json"):
        assert (out / name).is_file()
    info = json.loads((out / "run.json").read_text())
    assert info["ray"]["address"] == "local" and info["ray"]["actors"] == 1
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "skipped 4 already done" in capsys.readouterr().err


@pytest.mark.slow
def test_detect_ray_dual_against_fixed_references(inputs, tiny_backbone, tiny_config, mvtec,
                                                  tmp_path):  # fmt: skip
    """`--ray --mode dual --references DIR`: image x scored as the local set mode scores
    it in [x, *references] (PyTorch Detector, ≤ 1e-6); the references enter the fingerprint."""
    pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    from anoclip import Detector

    refs = tmp_path / "refs"
    refs.mkdir()
    for k in (1, 2):
        shutil.copy(mvtec / f"screw/test/good/00{k}.png", refs / f"good{k}.png")
    tests = [str(inputs / "scratch_head_000.png"), str(inputs / "thread_top_001.png")]
    out = tmp_path / "dual"
    ray = ["--ray", "--actors", "1", "--references", str(refs)]
    args = ["detect", *tests, "--object", "screw", "--out", str(out), *CLS, "--mode", "dual",
            *tiny_cli(tiny_config), *ray]  # fmt: skip
    assert main(args) == 0
    det = Detector(backbone=tiny_backbone, image_score="cls", temperature=0.07)
    ref_paths = sorted(str(p) for p in refs.iterdir())
    got = rows(out)
    assert sorted(got) == sorted(tests)
    for x in tests:
        want = det.predict([x, *ref_paths], "screw", tta=False, mode="dual")[0]
        assert want.mode == "dual" and abs(float(got[x]["score"]) - want.score) <= RAY_TOL
        amap = np.load(out / "maps" / f"{got[x]['name']}.npy")
        assert np.abs(amap - want.anomaly_map).max() <= RAY_TOL
    finger = json.loads((out / "run.json").read_text())["fingerprint"]
    assert finger["references"] == [str(Path(p).resolve()) for p in ref_paths]
