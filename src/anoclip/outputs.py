"""Writing detection results to a folder, crash-safely.

    OUT/scores.csv     source,name,score,width,height   one row per finished image (the
                       commit log); `name` is the file name of its maps, width × height
                       the image's own size
    OUT/errors.csv     source,reason       inputs that could not be decoded
    OUT/maps/NAME.npy  float32 [h, w]      raw anomaly map (the image's size, or smaller
                       when its longest side exceeds --max-map-side)
    OUT/maps/NAME.png  heat-map overlay    colours min-max scaled per image
    OUT/run.json       what produced the folder (fingerprint, model, weights, settings)

Map files are written (atomically) before their score row, and rows are flushed after
every image, so an interrupted run keeps everything it finished and `--resume` skips it.
Earlier results are never truncated unless the writer is told to overwrite them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import ResultFolderError
from .images import load_rgb
from .records import Failure, Prediction
from .visualize import overlay

SCORES = "scores.csv"
SCORE_COLUMNS = ("source", "name", "score", "width", "height")
ERRORS = "errors.csv"


class ResultWriter:
    """Writes predictions and failures under `out_dir` as they arrive."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        resume: bool = False,
        overlays: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.out = Path(out_dir)
        self.maps = self.out / "maps"
        scores = self.out / SCORES
        if scores.is_file() and scores.stat().st_size > 0:
            if resume and _header(scores) != SCORE_COLUMNS:
                raise ResultFolderError(
                    f"{scores} has columns {', '.join(_header(scores))}, not those of this "
                    "anoclip version; use another folder or --overwrite"
                )
            if not resume and not overwrite:
                raise ResultFolderError(f"{self.out} holds earlier results; --overwrite")
        if overwrite:
            clear_results(self.out)
        self.maps.mkdir(parents=True, exist_ok=True)
        self.overlays = overlays
        self.finished = read_finished(scores) if resume else set()
        mode = "a" if resume else "w"
        self._scores = _CsvLog(scores, SCORE_COLUMNS, mode)
        self._errors = _CsvLog(self.out / ERRORS, ("source", "reason"), mode)
        self.num_errors = 0
        self._pool = ThreadPoolExecutor(max_workers=1)  # encodes PNGs while the model runs
        self._pending: list[tuple[Future, str]] = []

    def write_run_info(self, info: dict) -> None:
        _atomic_write(self.out / "run.json", json.dumps(info, indent=2, default=str).encode())

    def add(self, pred: Prediction, name: str, image_source: object) -> None:
        """Queue the map files of `pred`, then log its score once they are on disk."""
        job = self._pool.submit(self._write, pred, name, image_source)
        self._pending.append((job, name))
        self._drain(block=False)

    def add_failure(self, failure: Failure) -> None:
        self.num_errors += 1
        self._errors.row(failure.source, failure.reason)

    def close(self) -> None:
        self._drain(block=True)
        self._pool.shutdown(wait=True)
        self._scores.close()
        self._errors.close()
        if self.num_errors == 0 and (self.out / ERRORS).stat().st_size <= len("source,reason\n"):
            (self.out / ERRORS).unlink()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, pred: Prediction, name: str, image_source: object) -> Prediction:
        buf = _npy_bytes(pred.anomaly_map)
        _atomic_write(self.maps / f"{name}.npy", buf)
        if self.overlays:
            img = overlay(load_rgb(image_source), pred.anomaly_map)
            tmp = self.maps / f".{name}.png.tmp"
            img.save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, self.maps / f"{name}.png")
        return pred

    def _drain(self, block: bool) -> None:
        while self._pending and (block or self._pending[0][0].done()):
            job, name = self._pending.pop(0)
            pred = job.result()
            height, width = pred.image_size or pred.anomaly_map.shape
            self._scores.row(pred.source, name, f"{pred.score:.8f}", width, height)


class _CsvLog:
    """A CSV file with a header, flushed after every row."""

    def __init__(self, path: Path, header: tuple[str, ...], mode: str) -> None:
        fresh = mode == "w" or not path.exists() or path.stat().st_size == 0
        self._file = open(path, mode, newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._file, lineterminator="\n")
        if fresh:
            self._csv.writerow(header)
            self._file.flush()

    def row(self, *values: object) -> None:
        self._csv.writerow(values)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def clear_results(out: Path) -> None:
    """Remove the results of an earlier run from `out` (scores, errors, maps, run info)."""
    for name in (SCORES, ERRORS, "run.json"):
        (out / name).unlink(missing_ok=True)
    maps = out / "maps"
    if maps.is_dir():
        for f in maps.iterdir():
            if f.is_file() and f.suffix in (".npy", ".png", ".tmp"):
                f.unlink()


def _header(path: Path) -> tuple[str, ...]:
    with open(path, newline="", encoding="utf-8") as f:
        return tuple(next(csv.reader(f), ()))


def read_finished(path: Path) -> set[str]:
    """Sources already listed in a scores.csv (empty if there is none)."""
    if not path.exists():
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        return {row["source"] for row in csv.DictReader(f) if row.get("source")}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32))
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
