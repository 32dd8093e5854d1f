"""The naive reference-style loop of benchmarks/speed.py and our batched pipeline give the
same outputs (so the speed ratio compares equal work)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from anoclip import Detector

from ..conftest import REPO


@pytest.fixture(scope="module")
def speed_module():
    spec = importlib.util.spec_from_file_location("speed", REPO / "benchmarks/speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_naive_loop_and_batched_pipeline_agree(speed_module, tiny_backbone, mvtec):
    paths = [str(mvtec / "screw/test/good/000.png"), str(mvtec / "screw/test/thread_top/003.png")]
    ours = Detector(backbone=tiny_backbone, batch_size=2).predict(paths, "screw")
    for path, pred in zip(paths, ours):
        score, amap = speed_module.naive_predict(tiny_backbone, path, "screw")
        assert amap.shape == pred.anomaly_map.shape
        assert np.abs(amap - pred.anomaly_map).max() <= 1e-5
        assert abs(score - pred.score) <= 1e-5
