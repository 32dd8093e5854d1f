"""The Ray runner's pure parts: actor planning, refusals, the CSV commit log, Parquet."""

from __future__ import annotations

import csv

import pytest

from anoclip.deploy.ray_cluster import _CsvAppend, _plan_actors, run_ray, write_parquet
from anoclip.errors import ResultFolderError, UsageError
from anoclip.results.writer import SCORE_COLUMNS


def test_plan_actors():
    assert _plan_actors({"CPU": 8.0}, None, 1.0, None) == (0.0, 8)
    assert _plan_actors({"CPU": 8.0}, None, 4.0, None) == (0.0, 2)
    assert _plan_actors({"CPU": 64.0, "GPU": 8.0}, None, 4.0, None) == (1.0, 8)
    assert _plan_actors({"CPU": 64.0, "GPU": 8.0}, None, 2.0, 0.5) == (0.5, 16)
    assert _plan_actors({"CPU": 2.0}, 3, 1.0, None) == (0.0, 3)
    with pytest.raises(UsageError):
        _plan_actors({"CPU": 2.0}, 0, 1.0, None)


def test_refusals_come_before_ray_starts(tmp_path):
    with pytest.raises(UsageError, match="O\\(N²\\).*references="):
        run_ray(["a.png"], "screw", tmp_path, mode="mutual")
    with pytest.raises(UsageError, match="references"):
        run_ray(["a.png"], "screw", tmp_path, references=["b.png"])
    with pytest.raises(UsageError, match="exclude"):
        run_ray(["a.png"], "screw", tmp_path, resume=True, overwrite=True)
    (tmp_path / "scores.csv").write_text("source,name,score,width,height\nx,x,0.5,2,2\n")
    with pytest.raises(ResultFolderError, match="earlier results"):
        run_ray(["a.png"], "screw", tmp_path, resume=False)


def test_commit_log_keeps_an_existing_header(tmp_path):
    path = tmp_path / "scores.csv"
    with _CsvAppend(path, SCORE_COLUMNS) as log:
        log.row(source="a", name="a", score="0.5", width=3, height=2)
    old = tmp_path / "old.csv"
    old.write_text("source,name,score,width,height\n")
    with _CsvAppend(old, SCORE_COLUMNS) as log:
        log.row(source="b", name="b", score="0.25", width=3, height=2)
    new_rows = list(csv.DictReader(path.open()))
    assert tuple(new_rows[0]) == SCORE_COLUMNS and new_rows[0]["score"] == "0.5"
    assert old.read_text().splitlines() == ["source,name,score,width,height", "b,b,0.25,3,2"]


def test_parquet_from_the_commit_log(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    with _CsvAppend(tmp_path / "scores.csv", SCORE_COLUMNS) as log:
        log.row(source="a.png", name="a", score="0.12345678", width=3, height=2)
    write_parquet(tmp_path)
    rows = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    assert rows == [{"source": "a.png", "name": "a", "score": 0.12345678, "width": 3,
                     "height": 2}]  # fmt: skip
    assert write_parquet(tmp_path / "missing") is None
