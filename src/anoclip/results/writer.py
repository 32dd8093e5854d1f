"""Writing detection results to a folder, crash-safely, with the decisions made on them.

    OUT/scores.csv      one row per finished image (the commit log):
                        source,name,score,width,height,decision,score/threshold,
                        threshold_method — `name` is the file name of its maps, width ×
                        height the image's own size, decision "ok" / "review" / "defect"
                        (:mod:`anoclip.threshold`), score/threshold the ratio score / t_d
                        (> 1 means defect), threshold_method
                        "normal" (known-good images) or "unsupervised"
    OUT/errors.csv      source,reason       inputs that could not be decoded
    OUT/maps/NAME.npy   [h, w] raw anomaly map, float16 (float32 with map_dtype="float32"),
                        the image's size or smaller when its longest side exceeds
                        --max-map-side
    OUT/maps/NAME.png   heat-map overlay at the map's size, on the run's scale anchored to
                        its threshold (:func:`anoclip.results.overlays.calibrated_scale`; the
                        PNG's text chunks say which)
    OUT/masks/NAME.png  binary defect mask at the image's size (when the threshold has a
                        pixel level): :func:`anoclip.threshold.defect_mask`
    OUT/threshold.json  the threshold every decision comes from (:class:`Threshold`)
    OUT/report.html     the page a person reviews (:mod:`anoclip.results.report`)
    OUT/run.json        what produced the folder (fingerprint, model, weights, settings)

Map files are written (atomically) before their score row, and rows are flushed after
every image, so an interrupted run keeps everything it finished and `--resume` skips it.
Earlier results are never truncated unless the writer is told to overwrite them.

Decisions. With a threshold known before scoring (from known-good images, a threshold
file, or a resumed folder's own calibrated threshold) every row, overlay and mask is
written as its image finishes. The unsupervised rule (:mod:`anoclip.decide.unlabeled`) is
only known once every image is scored: rows are written with empty decision cells and
:meth:`ResultWriter.finalize` computes the threshold over ALL rows (a resumed run's earlier
rows too), rewrites scores.csv atomically with the cells filled, and writes threshold.json,
the overlays and the masks. Invariant: every decision in scores.csv, every overlay's scale
and every mask comes from the threshold in threshold.json — a resumed run first re-decides
(known threshold) or clears (unsupervised) the earlier rows, removes their masks, and
redraws their overlays and masks at the end.
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
from tqdm.auto import tqdm

from anoclip.data.images import load_rgb
from anoclip.decide.calibrate import calibrate_unsupervised
from anoclip.decide.unlabeled import MIN_UNLABELED
from anoclip.errors import AnoclipWarning, ResultFolderError
from anoclip.records import Failure, Prediction
from anoclip.results import report
from anoclip.results.commit_log import SCORES, holds_results
from anoclip.results.overlays import calibrated_scale, overlay, png_info
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

    threshold: the decision rule when known before scoring (rows, overlays, masks and
    threshold.json are then written as images finish); None: decided by :meth:`finalize`.
    map_dtype: how OUT/maps/NAME.npy is stored ("float16": half the bytes, a step of
    ≤ 2.4e-4 for a map in [0, 0.5] and ≤ 4.9e-4 up to 1; "float32" keeps the map exactly).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        resume: bool = False,
        overlays: bool = True,
        overwrite: bool = False,
        threshold: Threshold | None = None,
        map_dtype: str = "float16",
    ) -> None:
        self.out = Path(out_dir)
        self.map_dtype = np.dtype(map_dtype)
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
        self.drawn: set[str] = set()  # names whose overlay and mask this run drew
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
        self, settings_id: Mapping[str, Any] | None = None, progress: bool = False
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
        todo = [r for r in rows if r["name"] not in self.drawn]
        draw_rows(self.out, todo, threshold, self.overlays, progress)
        return threshold, rows

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, pred: Prediction, name: str, image_source: object) -> Prediction:
        buf = npy_bytes(pred.anomaly_map, self.map_dtype)
        atomic_write(self.maps / f"{name}.npy", buf)
        t = self.threshold
        if t is not None:  # else drawn by finalize, once the threshold is known
            height, width = pred.image_size or pred.anomaly_map.shape
            draw(self.out, name, pred.anomaly_map, image_source, t, decide(pred.score, t),
                 (width, height), self.overlays)  # fmt: skip
            self.drawn.add(name)
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
    """The unlabeled-set bounds (:mod:`anoclip.decide.unlabeled`) over the rows' scores, and
    over their maps' maxima for the pixel level (maps read one at a time); None, with a
    warning, for fewer than 3 rows."""
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


def draw(
    out: Path,
    name: str,
    anomaly_map: np.ndarray | Path,
    image_source: object,
    threshold: Threshold | None,
    decision: str | None,
    size: tuple[int, int],
    overlays: bool = True,
) -> None:
    """OUT/maps/NAME.png (the overlay on the threshold's scale, [0, 1] without one; skipped
    when the image is gone) and OUT/masks/NAME.png (with a pixel bound), size = the image's
    (width, height)."""
    values = report.load_map(anomaly_map)
    if overlays and (not isinstance(image_source, (str, Path)) or Path(image_source).is_file()):
        lo, hi = calibrated_scale(threshold)
        img = overlay(load_rgb(image_source), values, vmin=lo, vmax=hi)
        tmp = out / "maps" / f".{name}.png.tmp"
        img.save(tmp, format="PNG", compress_level=6, pnginfo=png_info(lo, hi))
        os.replace(tmp, out / "maps" / f"{name}.png")
    if threshold is not None and threshold.pixel_threshold is not None:
        report.write_mask(out, name, values, threshold, decision, size)


def draw_rows(
    out: Path,
    rows: Sequence[Row],
    threshold: Threshold | None,
    overlays: bool,
    progress: bool = False,
) -> None:
    """:func:`draw` for each row from its OUT/maps/NAME.npy (one file at a time)."""
    what = "overlays and masks" if overlays else "masks"
    for row in tqdm(rows, desc=what, unit="img", disable=not progress or not rows):
        source = out / "maps" / f"{row['name']}.npy"
        if source.is_file():
            size = (int(row["width"]), int(row["height"]))
            draw(out, row["name"], source, row["source"], threshold, row.get("decision") or None,
                 size, overlays)  # fmt: skip


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


def interrupted_message(out: str | os.PathLike | None) -> str:
    """What an interrupted run says about its results folder `out`: how many finished
    images its scores.csv keeps, or that none had finished (a dual/mutual run writes none
    before the whole set is encoded), never "finished results are kept" over nothing."""
    try:
        done = len(read_rows(Path(out) / SCORES)) if out is not None else 0
    except (OSError, ValueError, csv.Error):
        done = 0
    if done == 0:
        return "anoclip: interrupted before any image finished; no results are kept"
    return f"anoclip: interrupted; {done} finished image(s) kept in {out} (--resume continues)"


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


def npy_bytes(arr: np.ndarray, dtype: np.dtype | type = np.float32) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=dtype))
    return buf.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all (a temporary file per process, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_run_info(out: Path, info: dict) -> None:
    """`info` as indented JSON in `out`/run.json, atomically."""
    atomic_write(out / RUN_INFO, json.dumps(info, indent=2, default=str).encode())
