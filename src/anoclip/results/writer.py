"""Writing detection results to a folder, crash-safely, with the decisions made on them.

    OUT/scores.csv      one row per finished image (the commit log):
                        source,name,score,width,height,decision,score/threshold,
                        threshold_method — `name` is the file name of its maps, width ×
                        height the image's own size, decision "ok" / "defect" (score > t),
                        score/threshold the ratio (> 1 means defect), threshold_method
                        "normal" (known-good images) or "unsupervised"
    OUT/errors.csv      source,reason       inputs that could not be decoded
    OUT/maps/NAME.npy   float32 [h, w]      raw anomaly map (the image's size, or smaller
                        when its longest side exceeds --max-map-side)
    OUT/maps/NAME.png   heat-map overlay on the FIXED scale [0, 1] (anomaly probability,
                        :data:`anoclip.results.overlays.FIXED_SCALE`; the PNG's text chunks say so)
    OUT/masks/NAME.png  binary defect mask, 255 where map > pixel threshold, at the
                        image's size (when the threshold has a pixel level)
    OUT/threshold.json  the threshold every decision comes from (:class:`Threshold`)
    OUT/report.html     the page a person reviews (:mod:`anoclip.results.report`)
    OUT/run.json        what produced the folder (fingerprint, model, weights, settings)

Map files are written (atomically) before their score row, and rows are flushed after
every image, so an interrupted run keeps everything it finished and `--resume` skips it.
Earlier results are never truncated unless the writer is told to overwrite them.

Decisions. With a threshold known before scoring (from known-good images, a threshold
file, or a resumed folder's own calibrated threshold) every row and mask is written as
its image finishes. The unsupervised rule (median + 3.5·1.4826·MAD of the set's scores)
is only known once every image is scored: rows are written with empty decision cells and
:meth:`ResultWriter.finalize` computes the threshold over ALL rows (a resumed run's earlier
rows too), rewrites scores.csv atomically with the cells filled, and writes threshold.json
and the masks. Invariant: every decision in scores.csv and every mask comes from the
threshold in threshold.json — a resumed run first re-decides (known threshold) or clears
(unsupervised) the earlier rows, and removes their masks until it rewrites them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from anoclip.data.images import load_rgb
from anoclip.decide.calibrate import MIN_UNLABELED, calibrate_unsupervised
from anoclip.errors import AnoclipWarning, ResultFolderError
from anoclip.records import Failure, Prediction
from anoclip.results import report
from anoclip.results.commit_log import SCORES, holds_results
from anoclip.results.overlays import FIXED_SCALE, overlay, png_info
from anoclip.threshold import Threshold, decide, ratio

BASE_COLUMNS = ("source", "name", "score", "width", "height")
DECISION_COLUMNS = ("decision", "score/threshold", "threshold_method")
SCORE_COLUMNS = BASE_COLUMNS + DECISION_COLUMNS
ERRORS = "errors.csv"
THRESHOLD = "threshold.json"
RUN_INFO = "run.json"
MASKS = report.MASKS
REPORT = report.REPORT

Row = dict[str, str]


class ResultWriter:
    """Writes predictions and failures under `out_dir` as they arrive.

    threshold: the decision rule when known before scoring (rows, masks and threshold.json
    are then written as images finish); None: decided by :meth:`finalize` at the end.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        resume: bool = False,
        overlays: bool = True,
        overwrite: bool = False,
        threshold: Threshold | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.maps = self.out / "maps"
        scores = self.out / SCORES
        check_folder(self.out, resume, overwrite)
        if overwrite:
            clear_results(self.out)
        self.maps.mkdir(parents=True, exist_ok=True)
        self.overlays = overlays
        self.threshold = threshold
        self.finished = set()
        if resume and scores.is_file():
            earlier = read_rows(scores)
            self.finished = {row["source"] for row in earlier}
            self._restart_decisions(scores, earlier)
        if threshold is not None:
            threshold.to_json(self.out / THRESHOLD)
        mode = "a" if resume else "w"
        self._scores = _CsvLog(scores, SCORE_COLUMNS, mode)
        self._errors = _CsvLog(self.out / ERRORS, ("source", "reason"), mode)
        self.num_errors = 0
        self.masked: set[str] = set()  # names whose mask this run wrote with `threshold`
        self._pool = ThreadPoolExecutor(max_workers=1)  # encodes PNGs while the model runs
        self._pending: list[tuple[Future, str]] = []

    def _restart_decisions(self, scores: Path, earlier: list[Row]) -> None:
        """A resumed run: the earlier rows re-decided with the known threshold (or cleared
        for the unsupervised rule), their masks and a stale threshold file removed."""
        write_rows(scores, decide_rows(earlier, self.threshold))
        remove_masks(self.out)
        if self.threshold is None:
            (self.out / THRESHOLD).unlink(missing_ok=True)

    def write_run_info(self, info: dict) -> None:
        write_run_info(self.out, info)

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

    def finalize(
        self, settings_id: Mapping[str, Any] | None = None
    ) -> tuple[Threshold | None, list[Row]]:
        """After :meth:`close`: the final threshold (the known one, else the unsupervised
        rule over all rows; None with fewer than 3 images) and all rows, decided. Rewrites
        scores.csv, threshold.json and the masks this run has not written."""
        rows = read_rows(self.out / SCORES)
        threshold = self.threshold
        if threshold is None:
            threshold = unsupervised_threshold(rows, self.maps, settings_id)
            if threshold is not None:
                threshold.to_json(self.out / THRESHOLD)
        rows = decide_rows(rows, threshold)
        write_rows(self.out / SCORES, rows)
        if threshold is not None and threshold.pixel_threshold is not None:
            todo = [r for r in rows if r["name"] not in self.masked]
            write_masks(self.out, todo, threshold.pixel_threshold)
        return threshold, rows

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, pred: Prediction, name: str, image_source: object) -> Prediction:
        buf = _npy_bytes(pred.anomaly_map)
        atomic_write(self.maps / f"{name}.npy", buf)
        if self.overlays:
            img = overlay(load_rgb(image_source), pred.anomaly_map, vmin=FIXED_SCALE[0],
                          vmax=FIXED_SCALE[1])  # fmt: skip
            tmp = self.maps / f".{name}.png.tmp"
            img.save(tmp, format="PNG", compress_level=1, pnginfo=png_info(*FIXED_SCALE))
            os.replace(tmp, self.maps / f"{name}.png")
        t = self.threshold
        if t is not None and t.pixel_threshold is not None:
            height, width = pred.image_size or pred.anomaly_map.shape
            report.write_mask(self.out, name, pred.anomaly_map, t.pixel_threshold, (width, height))
            self.masked.add(name)
        return pred

    def _drain(self, block: bool) -> None:
        while self._pending and (block or self._pending[0][0].done()):
            job, name = self._pending.pop(0)
            pred = job.result()
            height, width = pred.image_size or pred.anomaly_map.shape
            cells = decision_cells(pred.score, self.threshold)
            self._scores.row(pred.source, name, f"{pred.score:.8f}", width, height, *cells)


def check_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Never truncate earlier results (finished rows) unless told to; resume only this
    version's columns."""
    scores = out / SCORES
    if not (scores.is_file() and scores.stat().st_size > 0):
        return
    if resume and _header(scores) not in (SCORE_COLUMNS, BASE_COLUMNS):
        raise ResultFolderError(
            f"{scores} has columns {', '.join(_header(scores))}, not those of this anoclip "
            "version; use another folder or --overwrite"
        )
    if not resume and not overwrite and holds_results(out):
        raise ResultFolderError(f"{out} holds earlier results; --overwrite")


# ---------------------------------------------------------------------------------------
# Decisions on rows (pure, or one file at a time)
# ---------------------------------------------------------------------------------------


def decision_cells(score: float, threshold: Threshold | None) -> tuple[str, str, str]:
    """(decision, score/threshold, threshold_method) cells; empty without a threshold."""
    if threshold is None:
        return "", "", ""
    r = ratio(score, threshold)
    return decide(score, threshold), "" if math.isnan(r) else f"{r:.6f}", threshold.method


def decide_rows(rows: Iterable[Row], threshold: Threshold | None) -> list[Row]:
    """Rows with their decision cells recomputed from `threshold` (cleared if None)."""
    out = []
    for row in rows:
        cells = decision_cells(float(row["score"]), threshold)
        out.append({**row, **dict(zip(DECISION_COLUMNS, cells))})
    return out


def unsupervised_threshold(
    rows: Sequence[Row], maps: Path, settings_id: Mapping[str, Any] | None = None
) -> Threshold | None:
    """median + 3.5·1.4826·MAD over the rows' scores, and over their maps' maxima for the
    pixel level (maps read one at a time); None, with a warning, for fewer than 3 rows."""
    if len(rows) < MIN_UNLABELED:
        warnings.warn(
            f"{len(rows)} image(s) are too few for an unsupervised threshold (need "
            f"{MIN_UNLABELED}): no decisions; pass --normal DIR of known-good images",
            AnoclipWarning,
            stacklevel=2,
        )
        return None
    files = [maps / f"{row['name']}.npy" for row in rows]
    pixel_maps = files if all(f.is_file() for f in files) else None
    return calibrate_unsupervised(
        [float(row["score"]) for row in rows], pixel_maps, settings=settings_id
    )


def write_masks(out: Path, rows: Iterable[Row], pixel_threshold: float) -> None:
    """OUT/masks/NAME.png for each row from its OUT/maps/NAME.npy, at the image's size."""
    for row in rows:
        source = out / "maps" / f"{row['name']}.npy"
        if source.is_file():
            size = (int(row["width"]), int(row["height"]))
            report.write_mask(out, row["name"], source, pixel_threshold, size)


def remove_masks(out: Path) -> None:
    """Delete OUT/masks/*.png (masks of an earlier threshold)."""
    folder = out / MASKS
    if folder.is_dir():
        for f in folder.iterdir():
            if f.is_file() and f.suffix in (".png", ".tmp"):
                f.unlink()


def report_rows(out: Path, rows: Iterable[Row]) -> list[report.ReportRow]:
    """Report rows of a result folder: the image (None when it is gone), the .npy map."""
    out_rows = []
    for row in rows:
        source = row["source"] if Path(row["source"]).is_file() else None
        map_file = out / "maps" / f"{row['name']}.npy"
        r = row.get("score/threshold") or ""
        out_rows.append(
            report.ReportRow(
                source=source, name=row["name"], score=float(row["score"]),
                decision=row.get("decision") or None, ratio=float(r) if r else None,
                map=map_file if map_file.is_file() else None,
            )
        )  # fmt: skip
    return out_rows


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------


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
    """Remove the results of an earlier run from `out` (scores, errors, maps, masks, run
    info, threshold, report)."""
    for name in (SCORES, ERRORS, RUN_INFO, THRESHOLD, REPORT):
        (out / name).unlink(missing_ok=True)
    maps = out / "maps"
    if maps.is_dir():
        for f in maps.iterdir():
            if f.is_file() and f.suffix in (".npy", ".png", ".tmp"):
                f.unlink()
    remove_masks(out)


def _header(path: Path) -> tuple[str, ...]:
    with open(path, newline="", encoding="utf-8") as f:
        return tuple(next(csv.reader(f), ()))


def read_rows(path: Path) -> list[Row]:
    """The rows of a scores.csv (any earlier version: missing cells read as "")."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = [{c: row.get(c) or "" for c in SCORE_COLUMNS} for row in csv.DictReader(f)]
    return [row for row in rows if row["source"]]


def write_rows(path: Path, rows: Iterable[Row]) -> None:
    """Replace scores.csv atomically with `rows` under the current header."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SCORE_COLUMNS)
    for row in rows:
        w.writerow([row.get(c, "") for c in SCORE_COLUMNS])
    atomic_write(path, buf.getvalue().encode("utf-8"))


def read_finished(path: Path) -> set[str]:
    """Sources already listed in a scores.csv (empty if there is none)."""
    return {row["source"] for row in read_rows(path)}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32))
    return buf.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all (a temporary file per process, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_run_info(out: Path, info: dict) -> None:
    """`info` as indented JSON in `out`/run.json, atomically."""
    atomic_write(out / RUN_INFO, json.dumps(info, indent=2, default=str).encode())
