"""The Ray runner against the single-process Detector.

Default suite: the actor's work (ScoreActor called in this process, no cluster) and the
fixed-reference set modes, each against `Detector.predict`. Slow: a local Ray cluster
(`ray.init(num_cpus=2)`), scores equal to the single-process run (≤ 1e-6), crash + resume.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")
pytest.importorskip("pyarrow")

from anoclip import Detector  # noqa: E402
from anoclip.deploy.ray_cluster import RayJob, ScoreActor, encode_references, run_ray, score_against

TOL = 1e-6


SETTINGS = {"image_score": "cls", "text_tokens": "trimmed"}


@pytest.fixture(scope="module")
def kwargs(tiny_config):
    """Detector keywords as a Ray actor gets them (names, no loaded objects)."""
    return {"model": str(tiny_config), "pretrained": "none", **SETTINGS}


@pytest.fixture(scope="module")
def detector(tiny_backbone):
    return Detector(backbone=tiny_backbone, **SETTINGS)


def screw(mvtec, every: int = 10) -> list[str]:
    return sorted(str(p) for p in (mvtec / "screw" / "test").glob("*/*.png"))[::every]


def assert_close(score: float, amap: np.ndarray, want, tol: float = TOL) -> None:
    assert abs(score - want.score) <= tol
    assert amap.shape == want.anomaly_map.shape
    assert np.abs(amap - want.anomaly_map).max() <= tol


def test_actor_batch_equals_detector(tiny_backbone, detector, mvtec, tmp_path):
    """One actor call (in-process): scores, maps written to maps/NAME.npy, failures."""
    paths = screw(mvtec, 40)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    sources = [*paths, str(broken)]
    names = [f"img{k}" for k in range(len(sources))]
    job = RayJob("screw", str(tmp_path), {"backbone": tiny_backbone, **SETTINGS}, tta=False)
    actor = ScoreActor(job)
    out = actor({"source": np.array(sources), "name": np.array(names)})
    want = detector.predict(paths, "screw", tta=False)
    assert list(out["source"]) == sources and list(out["name"]) == names
    for k, w in enumerate(want):
        assert out["error"][k] == "" and (out["width"][k], out["height"][k]) == (1024, 1024)
        assert_close(float(out["score"][k]), np.load(tmp_path / "maps" / f"img{k}.npy"), w)
    assert "empty" in out["error"][-1] and np.isnan(out["score"][-1])
    assert not (tmp_path / "maps" / f"img{len(paths)}.npy").exists()
    assert not list((tmp_path / "maps").glob(".*tmp"))  # no temporary files left


@pytest.mark.parametrize("mode", ["dual", "mutual"])
def test_fixed_references_score_like_the_set_mode(detector, mvtec, tmp_path, mode):
    """Image x against a reference bank == Detector.predict([x, *refs], mode)[0]."""
    refs = [str(mvtec / "screw/test/good" / f"00{k}.png") for k in range(3)]
    tests = [str(mvtec / "screw/test/thread_top/001.png")]
    bank = encode_references(detector, refs, "screw", False)
    job = RayJob("screw", str(tmp_path), {}, tta=False, mode=mode)
    got = score_against(detector, job, tests, bank)
    for x, g in zip(tests, got):
        want = detector.predict([x, *refs], "screw", tta=False, mode=mode)[0]
        assert g.mode == want.mode == mode
        assert_close(g.score, g.anomaly_map, want)


def test_run_ray_two_images_one_actor(kwargs, detector, mvtec, tmp_path, monkeypatch):
    """The smallest real Ray run (1 CPU, 1 actor): same scores and maps as one process;
    relative inputs are read wherever the workers run and reported as given."""
    import pyarrow.parquet as pq
    import ray

    paths = screw(mvtec, 80)
    monkeypatch.chdir(mvtec / "screw")
    relative = [str(Path(p).relative_to(mvtec / "screw")) for p in paths]
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_ray(relative, "screw", tmp_path, kwargs, tta=False)
    finally:
        ray.shutdown()
    assert (summary.scored, summary.failed, summary.actors) == (2, 0, 1)
    want = {p.source: p for p in detector.predict(relative, "screw", tta=False)}
    rows = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    assert sorted(r["source"] for r in rows) == sorted(relative)
    for r in rows:
        assert_close(r["score"], np.load(tmp_path / "maps" / f"{r['name']}.npy"), want[r["source"]])


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_run_ray_matches_single_process_and_resumes(kwargs, detector, mvtec, tmp_path):
    import pyarrow.parquet as pq
    import ray

    paths = screw(mvtec, 10)  # 16 images, all defect types
    out = tmp_path / "out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        first = run_ray(paths, "screw", out, kwargs, tta=False, batch_size=4)
        assert (first.scored, first.failed, first.skipped, first.actors) == (16, 0, 0, 2)
        want = {p.source: p for p in detector.predict(paths, "screw", tta=False)}
        table = pq.read_table(out / "scores.parquet").to_pylist()
        assert sorted(r["source"] for r in table) == sorted(paths)
        for r in table:
            assert_close(r["score"], np.load(out / "maps" / f"{r['name']}.npy"), want[r["source"]])

        # a crash after 5 rows: the rest is scored again on resume, nothing twice
        lines = (out / "scores.csv").read_text().splitlines(keepends=True)
        (out / "scores.csv").write_text("".join(lines[:6]))
        again = run_ray(paths, "screw", out, kwargs, tta=False, batch_size=4)
        assert (again.scored, again.skipped) == (11, 5)
        rows = _rows(out / "scores.csv")
        assert sorted(r["source"] for r in rows) == sorted(paths)
        assert pq.read_table(out / "scores.parquet").num_rows == 16

        # a set mode against fixed references, shared through the object store
        refs = [str(mvtec / "screw/test/good" / f"00{k}.png") for k in range(3)]
        tests = paths[-3:]
        dual = run_ray(tests, "screw", tmp_path / "dual", kwargs, tta=False, mode="dual",
                       references=refs)  # fmt: skip
        assert dual.scored == 3
        for r in _rows(tmp_path / "dual" / "scores.csv"):
            w = detector.predict([r["source"], *refs], "screw", tta=False, mode="dual")[0]
            amap = np.load(tmp_path / "dual" / "maps" / f"{r['name']}.npy")
            assert_close(float(r["score"]), amap, w)
    finally:
        ray.shutdown()
