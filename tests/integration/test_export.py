"""Exported scorers (ONNX via onnxruntime, OpenVINO) against the PyTorch pipeline.

The reference is the production path, `anoclip.testing.run_batch(..., tta=False)` (encode
+ score_each), not the exported module: max |Δ| ≤ 1e-4 on image scores and model-resolution
maps, at batch 1 and 4, for the CLS score (views 1) and the 22-view score.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from anoclip import Detector  # noqa: E402
from anoclip.data.standalone import HELPER_NAME, open_runner, read_meta  # noqa: E402
from anoclip.deploy.convert import export_model, openvino_from_onnx  # noqa: E402
from anoclip.deploy.engine import Engine  # noqa: E402
from anoclip.testing import run_batch  # noqa: E402

TOL = 1e-4
SCREW = ("good/000.png", "scratch_head/000.png", "thread_top/001.png", "manipulated_front/002.png")


def screw_paths(mvtec) -> list[str]:
    return [str(mvtec / "screw" / "test" / p) for p in SCREW]


def assert_same_predictions(got: list, want: list, tol: float = TOL) -> None:
    assert [g.source for g in got] == [w.source for w in want]
    for g, w in zip(got, want):
        assert g.mode == w.mode == "anoclip" and g.image_size == w.image_size
        assert abs(g.score - w.score) <= tol
        assert g.anomaly_map.shape == w.anomaly_map.shape
        assert np.abs(g.anomaly_map - w.anomaly_map).max() <= tol


def reference(detector: Detector, paths: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs `[N, 3, S, S]`, scores `[N]`, maps `[N, S, S]`) of the PyTorch pipeline."""
    samples = [detector.prepare(p, i) for i, p in enumerate(paths)]
    ref = run_batch(detector, samples, detector.text_bank("screw"), tta=False)
    x = torch.cat([s.tiles for s in samples]).numpy()
    return x, np.array([r.score for r in ref]), torch.stack([r.map for r in ref]).numpy()


def max_deltas(model: Path, ref: tuple, batch: int) -> tuple[float, float]:
    """(max |Δscore|, max |Δmap|) of the exported file run on the first `batch` inputs."""
    x, want_scores, want_maps = (r[:batch] for r in ref)
    scores, maps = open_runner(model)(x)
    assert scores.shape == (batch,) and maps.shape == (batch, *x.shape[-2:])
    return float(np.abs(scores - want_scores).max()), float(np.abs(maps - want_maps).max())


@pytest.fixture(scope="module")
def cls_detector(tiny_backbone):
    return Detector(backbone=tiny_backbone, image_score="cls")


@pytest.fixture(scope="module")
def views_detector(tiny_backbone):
    return Detector(backbone=tiny_backbone)  # image_score="cls_aug22" (default)


@pytest.fixture(scope="module")
def cls_reference(cls_detector, mvtec):
    return reference(cls_detector, screw_paths(mvtec))


@pytest.fixture(scope="module")
def views_reference(views_detector, mvtec):
    return reference(views_detector, screw_paths(mvtec))


@pytest.fixture(scope="module")
def onnx_cls(cls_detector, tmp_path_factory):
    return export_model(cls_detector, "screw", tmp_path_factory.mktemp("cls") / "screw.onnx")


@pytest.fixture(scope="module")
def onnx_views(views_detector, tmp_path_factory):
    out = tmp_path_factory.mktemp("views") / "screw.onnx"
    return export_model(views_detector, "screw", out, views=22, check=False)


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_cls_score_matches_pytorch(onnx_cls, cls_reference, batch):
    d_score, d_map = max_deltas(onnx_cls.model, cls_reference, batch)
    assert d_score <= TOL and d_map <= TOL


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_22_views_match_pytorch(onnx_views, views_reference, batch):
    d_score, d_map = max_deltas(onnx_views.model, views_reference, batch)
    assert d_score <= TOL and d_map <= TOL


def test_openvino_22_views_match_pytorch(
    onnx_views, views_reference, views_detector, mvtec, tmp_path
):
    pytest.importorskip("openvino")
    res = openvino_from_onnx(onnx_views.model, tmp_path / "screw.xml", check=False)
    assert {p.name for p in res.files} == {"screw.xml", "screw.bin", "screw.json", HELPER_NAME}
    assert read_meta(res.model)["engine"] == "openvino"
    for batch in (1, 4):
        d_score, d_map = max_deltas(res.model, views_reference, batch)
        assert d_score <= TOL and d_map <= TOL
    paths = screw_paths(mvtec)[:2]  # and through the engine, against Detector.predict
    want = views_detector.predict(paths, "screw", tta=False)
    got = Engine(res.model).predict(paths, "screw")
    assert_same_predictions(got, want)


def test_export_model_to_openvino(cls_detector, cls_reference, tmp_path):
    """The one-step OpenVINO export (ONNX in a temporary folder), self-checked."""
    pytest.importorskip("openvino")
    res = export_model(cls_detector, "screw", tmp_path / "screw.xml")
    assert res.max_abs_diff is not None and res.max_abs_diff <= TOL
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["screw.xml", "screw.bin", "screw.json", HELPER_NAME]
    )
    d_score, d_map = max_deltas(res.model, cls_reference, 4)
    assert d_score <= TOL and d_map <= TOL


def test_sidecar_and_files(onnx_cls, onnx_views, tiny_backbone):
    assert onnx_cls.max_abs_diff is not None and onnx_cls.max_abs_diff <= TOL  # self-check ran
    assert onnx_views.max_abs_diff is None  # check=False
    meta = json.loads(onnx_cls.sidecar.read_text())
    assert meta["object"] == "screw" and meta["image_size"] == 240 and meta["views"] == 1
    assert meta["mean"] == list(tiny_backbone.mean) and meta["std"] == list(tiny_backbone.std)
    assert meta["model"] == tiny_backbone.name and meta["random_weights"] is True
    assert meta["opset"] >= 18 and meta["anoclip_version"]
    assert read_meta(onnx_views.model)["views"] == 22
    inputs = ort.InferenceSession(str(onnx_cls.model)).get_inputs()
    assert inputs[0].name == "images" and isinstance(inputs[0].shape[0], str)  # dynamic batch


def test_helper_runs_without_torch(onnx_cls, cls_detector, mvtec, tmp_path):
    """The copied helper scores a file with numpy, Pillow and onnxruntime only."""
    image = screw_paths(mvtec)[1]
    code = (
        "import sys, runpy; sys.modules['torch'] = None; "  # any torch import now fails
        f"sys.argv = ['helper', {str(onnx_cls.model)!r}, {image!r}, '--out', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(onnx_cls.helper)!r}, run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rows = out.stdout.strip().splitlines()
    assert rows[0] == "source,score" and rows[1].startswith(image + ",")
    want = cls_detector.predict(image, "screw", tta=False)[0]
    assert abs(float(rows[1].rsplit(",", 1)[1]) - want.score) <= TOL
    amap = np.load(tmp_path / "000.npy")
    assert amap.shape == want.anomaly_map.shape and np.abs(amap - want.anomaly_map).max() <= TOL


def test_engine_scores_equal_detector(onnx_cls, cls_detector, mvtec):
    """Engine(.onnx).predict == Detector(image_score="cls").predict(tta=False), within 1e-4,
    on every 8th shared screw image (all defect types, 1024×1024 maps)."""
    paths = sorted(str(p) for p in (mvtec / "screw" / "test").glob("*/*.png"))[::8]
    want = cls_detector.predict(paths, "screw", tta=False)
    got = Engine(onnx_cls.model, batch_size=4).predict(paths, "screw")
    assert len(got) == len(paths) >= 20
    assert_same_predictions(got, want)


def test_cli_detect_engine_equals_detector(onnx_cls, cls_detector, mvtec, tmp_path):
    """`anoclip detect --engine FILE --normal DIR` writes the scores, maps and decisions of
    Detector(image_score="cls") with tta=False and its threshold from the same normals."""
    import csv

    from anoclip.cli import main

    paths = screw_paths(mvtec)[1:]
    normals = tmp_path / "normals"
    normals.mkdir()
    for k in range(3):
        (normals / f"{k}.png").write_bytes((mvtec / f"screw/test/good/00{k}.png").read_bytes())
    out = tmp_path / "out"
    args = ["detect", *paths, "--object", "screw", "--out", str(out), "--engine",
            str(onnx_cls.model), "--normal", str(normals), "--max-map-side", "256"]  # fmt: skip
    assert main(args) == 0
    threshold = cls_detector.calibrate(sorted(map(str, normals.iterdir())), "screw", tta=False)
    preds = cls_detector.predict(paths, "screw", tta=False, max_map_side=256, threshold=threshold)
    want = {p.source: p for p in preds}
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["source"] for r in rows) == sorted(paths)
    for r in rows:
        w = want[r["source"]]
        assert abs(float(r["score"]) - w.score) <= TOL and r["decision"] == w.decision
        amap = np.load(out / "maps" / f"{r['name']}.npy")
        assert amap.shape == w.anomaly_map.shape == (256, 256)
        assert np.abs(amap - w.anomaly_map).max() <= TOL
    saved = json.loads((out / "threshold.json").read_text())
    assert abs(saved["image_threshold"] - threshold.image_threshold) <= TOL


def test_engine_calibrates_like_detector(onnx_cls, cls_detector, mvtec):
    """Engine.calibrate == Detector(image_score="cls").calibrate(tta=False): same
    fingerprint, thresholds within 1e-4; decisions follow the threshold."""
    normals = [str(mvtec / "screw/test/good" / f"00{k}.png") for k in range(4)]
    engine = Engine(onnx_cls.model)
    assert engine.fingerprint("screw") == cls_detector.fingerprint("screw", tta=False)
    want = cls_detector.calibrate(normals, "screw", tta=False)
    got = engine.calibrate(normals, "screw")
    assert got.settings == want.settings and got.method == want.method == "normal"
    assert abs(got.image_threshold - want.image_threshold) <= TOL
    assert abs(got.pixel_threshold - want.pixel_threshold) <= TOL
    pred = engine.predict(screw_paths(mvtec)[1], "screw", threshold=got)[0]
    assert pred.decision == ("defect" if pred.score > got.image_threshold else "ok")


def test_engine_failures_skip_cap_and_errors(onnx_cls, mvtec, tmp_path):
    from anoclip.errors import UsageError
    from anoclip.records import Failure, Prediction

    good = screw_paths(mvtec)[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    engine = Engine(onnx_cls.model)
    items = list(engine.iter_predict([good[0], str(broken), good[1]], "screw", skip=[2],
                                     max_map_side=256))  # fmt: skip
    assert [type(i) for i in items] == [Prediction, Failure]
    assert items[0].anomaly_map.shape == (256, 256) and items[0].image_size == (1024, 1024)
    assert items[1].source == str(broken) and "empty" in items[1].reason
    with pytest.raises(UsageError, match="exported for object 'screw'"):
        engine.predict(good, "bottle")
    with pytest.raises(UsageError, match="TTA"):
        engine.predict(good, "screw", tta=True)
    with pytest.raises(UsageError, match="anoclip"):
        engine.predict(good, "screw", mode="dual")
    with pytest.raises(UsageError, match="sidecar"):
        lonely = tmp_path / "lonely.onnx"
        lonely.write_bytes(onnx_cls.model.read_bytes())
        Engine(lonely)


def test_missing_extra_names_it(cls_detector, tmp_path, monkeypatch):
    from anoclip.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(MissingExtraError, match=r"pip install anoclip\[export\]"):
        export_model(cls_detector, "screw", tmp_path / "x.onnx")


def test_usage_errors(cls_detector, tiny_backbone, tmp_path):
    from anoclip.errors import UsageError

    with pytest.raises(UsageError, match=".onnx"):
        export_model(cls_detector, "screw", tmp_path / "x.pt")
    with pytest.raises(UsageError, match="views"):
        export_model(cls_detector, "screw", tmp_path / "x.onnx", views=3)
    tiled = Detector(backbone=tiny_backbone, tiling="auto")
    with pytest.raises(UsageError, match="tiling"):
        export_model(tiled, "screw", tmp_path / "x.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("views", [1, 22])
def test_vit_b16_plus_random_weights(views, mvtec, tmp_path):
    """ViT-B-16-plus-240 (random weights): ONNX and OpenVINO within 1e-4 at batch 1 and 4."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(
            "ViT-B-16-plus-240", "none", device="cpu", text_tokens="trimmed",
            image_score="cls" if views == 1 else "cls_aug22",
        )  # fmt: skip
    res = export_model(det, "screw", tmp_path / "screw.onnx", views=views, check=False)
    xml = openvino_from_onnx(res.model, tmp_path / "screw.xml", check=False).model
    ref = reference(det, screw_paths(mvtec))
    for model in (res.model, xml):
        for batch in (1, 4):
            d_score, d_map = max_deltas(model, ref, batch)
            print(f"{model.suffix} views={views} batch={batch}: {d_score:.3g} {d_map:.3g}")
            assert d_score <= TOL and d_map <= TOL
