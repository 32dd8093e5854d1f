"""benchmarks/speed.py compares equal work: the AnoVL per-image loop (tests/oracles.py) and
`Detector.predict` give the same scores and maps, and the fp32 speed levers keep them."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from anoclip import Detector, UsageError
from anoclip.clip.features import cpu_has_bf16

from ..conftest import REPO
from ..oracles import AnoVLLoop

TOL = 1e-5


@pytest.fixture(scope="module")
def paths(mvtec):
    return [str(mvtec / "screw/test/good/000.png"), str(mvtec / "screw/test/thread_top/003.png")]


@pytest.fixture(scope="module")
def reference(tiny_backbone, paths):
    return Detector(backbone=tiny_backbone, batch_size=2).predict(paths, "screw")


def assert_close(preds, expected, tol: float = TOL) -> None:
    for pred, (score, amap) in zip(preds, expected):
        amap = np.asarray(amap)
        assert amap.shape == pred.anomaly_map.shape
        assert np.abs(amap - pred.anomaly_map).max() <= tol
        assert abs(score - pred.score) <= tol


def test_anovl_loop_and_detector_agree(tiny_backbone, paths, reference):
    loop = AnoVLLoop(tiny_backbone, "screw")
    assert_close(reference, [loop.predict(p) for p in paths])


def test_fused_plain_tower_keeps_fp32_outputs(tiny_backbone, paths, reference):
    """The plain views by fused attention (default) equal open_clip's own forward."""
    eager = Detector(backbone=tiny_backbone, batch_size=2, view_engine="open_clip")
    assert_close(reference, [(p.score, p.anomaly_map) for p in eager.predict(paths, "screw")])


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_runs_on_the_cpu(tiny_backbone, paths, reference, precision):
    """Opt-in reduced precision: same shapes, finite, close to fp32 (drift is measured in
    benchmarks/speed.py; with random weights maps sit near 0.5)."""
    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no bf16 kernels (refused: test_precision_refusals)")
    det = Detector(backbone=tiny_backbone, batch_size=2, precision=precision)
    preds = det.predict(paths, "screw")
    assert_close(reference, [(p.score, p.anomaly_map) for p in preds], tol=0.05)
    assert all(np.isfinite(p.anomaly_map).all() for p in preds)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_runtime_views_keep_fp32_outputs(tiny_backbone, paths, engine):
    """view_engine="openvino" (f32 inference precision) and "onnxruntime" score as
    open_clip's own forward."""
    pytest.importorskip(engine)
    import anoclip.clip.features as enc
    from anoclip.clip.plain import plain_forward
    from anoclip.clip.scoring import image_scores

    det = Detector(backbone=tiny_backbone)
    tiles = enc.tiles_of([det.prepare(p) for p in paths], det.device)
    bank = det.text_bank("screw")

    def scores(engine: str) -> np.ndarray:
        plain = plain_forward(det.backbone.model.visual, engine=engine)
        feats = enc.encode(det.backbone, det.encoder, tiles, bank, det.settings, seed=0,
                           tta="none", plain=plain)  # fmt: skip
        return image_scores(feats.cls_cos, det.settings.temperature, [1, 1]).numpy()

    assert np.abs(scores(engine) - scores("open_clip")).max() <= TOL


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_runtime_views_name_their_extra(tiny_backbone, monkeypatch, engine):
    """Without the runtime installed: one error naming `pip install anoclip[export]`."""
    from anoclip.clip.plain import plain_forward
    from anoclip.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, engine, None)  # `import engine` raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install anoclip\[export\]"):
        plain_forward(tiny_backbone.model.visual, engine=engine)


def test_precision_refusals(tiny_backbone, monkeypatch):
    """fp16 off CUDA, and bf16 on a CPU without bf16 kernels, are refused up front."""
    with pytest.raises(UsageError, match="fp16.*CUDA only"):
        Detector(backbone=tiny_backbone, precision="fp16")
    monkeypatch.setattr("anoclip.clip.features.cpu_has_bf16", lambda: False)
    with pytest.raises(UsageError, match="bf16.*AVX512"):
        Detector(backbone=tiny_backbone, precision="bf16")


def test_cost_model_reports_a_missing_anomalib(tiny_config, monkeypatch, capsys):
    """speed.py's cost model without anomalib: the WinCLIP row says so, the rest is counted."""
    spec = importlib.util.spec_from_file_location("speed", REPO / "benchmarks/speed.py")
    speed = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "speed", speed)  # its dataclasses look their module up
    spec.loader.exec_module(speed)
    monkeypatch.setitem(sys.modules, "anomalib", None)  # `import anomalib` raises ImportError
    monkeypatch.setitem(speed.MODELS, "tiny", str(tiny_config))
    from anoclip.clip.prompts import is_texture, prompt_name
    from anoclip.clip.text import build_text_bank

    bank = build_text_bank(speed.load("tiny"), prompt_name("screw"), is_texture("screw"))
    cost = speed.cost_model("tiny", bank)
    assert cost["vv"] > 0 and cost["tta"] > 0 and np.isnan(cost["winclip"])
    speed.print_cost(cost)
    row = next(line for line in capsys.readouterr().out.splitlines() if "WinCLIP" in line)
    assert "not installed: anomalib" in row
