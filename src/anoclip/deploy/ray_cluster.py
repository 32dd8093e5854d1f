"""Scoring many images on a Ray cluster with Ray Data (``pip install anoclip[ray]``).

    paths -> ray.data.from_items([{source, name}]) (sources already in scores.csv skipped)
        -> map_batches(ScoreActor, concurrency=A): one Detector per actor, built once;
           each batch: Detector.iter_predict -> OUT/maps/NAME.npy written atomically
           by the actor -> rows {source, name, score, width, height, error}
        -> driver, as batches stream back: rows appended to OUT/scores.csv (flushed)
        -> at the end: OUT/scores.parquet (atomic) from the whole scores.csv

Output folder: the layout of :mod:`anoclip.results.writer` (``scores.csv`` with its columns, the
decision cells left empty for a threshold applied afterwards; ``errors.csv``;
``maps/NAME.npy``; optional ``maps/NAME.png`` overlays), plus ``scores.parquet``
(source, name, score, width, height). On a cluster OUT must be a filesystem every node
can write (NFS, a mounted bucket): the actors write the maps, the driver the scores.

Crash safety and resume: a map is written to a temporary name and renamed; its score row
is appended only after the actor that wrote the map has returned, so every row in
scores.csv has its map on disk. A killed run leaves at most orphan maps (rewritten on
resume). With ``resume=True`` the sources already in scores.csv are not scored again.

Set modes ("dual", "mutual") need every image's tokens in one place and all pairs of them:
O(N²) work and memory over a whole data set, which does not scale out. The runner instead
scores each image against a fixed reference set (``references=``, e.g. a few known-good
images): it is encoded once on the driver, put in the object store, and each actor fetches
it once. Image x is then scored exactly as ``Detector.predict([x, *references],
mode=...)`` scores x: its references are chosen among the reference images only.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anoclip.data.images import load_rgb
from anoclip.data.listing import output_names
from anoclip.data.preprocess import resize_map
from anoclip.detector import Detector, capped
from anoclip.errors import ImageDecodeError, ResultFolderError, UsageError
from anoclip.extras import require
from anoclip.records import Features, Prediction, Sample
from anoclip.references.token_scorer import ScoringContext, score_set
from anoclip.results.overlays import overlay
from anoclip.results.writer import (
    ERRORS,
    SCORE_COLUMNS,
    SCORES,
    atomic_write,
    clear_results,
    read_finished,
)
from anoclip.settings import ref_count, tta_kind

PARQUET = "scores.parquet"
ERROR_COLUMNS = ("source", "reason")


@dataclass(frozen=True)
class RayJob:
    """What every actor needs to score a batch (picklable; sent once per actor).

    detector_kwargs: keyword arguments of :class:`Detector` (model, pretrained, seed,
    settings, overrides...); each actor builds its own Detector from them.
    """

    object_name: str
    out_dir: str
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    tta: bool | str = True
    mode: str = "anoclip"
    refs: int | str | None = None
    max_map_side: int | None = 2048
    overlays: bool = False
    threads: int | None = None


@dataclass
class ReferenceBank:
    """Fixed reference images of the set modes, encoded once: their samples (pixels
    dropped) and features (CPU), in the order of `sources`."""

    sources: list[str]
    samples: list[Sample]
    features: Features


@dataclass(frozen=True)
class RaySummary:
    """What a run did: images scored, unreadable, skipped (resume); seconds; actors."""

    scored: int
    failed: int
    skipped: int
    seconds: float
    actors: int


# ----------------------------------------------------------------------------- scoring


def encode_references(
    detector: Detector, references: Sequence[str | os.PathLike], object_name: str, tta: bool | str
) -> ReferenceBank:
    """Encode the reference images once (text branch with `tta`, frozen visual tokens)."""
    samples = [detector.prepare(str(p), i) for i, p in enumerate(references)]
    if not samples:
        raise UsageError("references: give at least one reference image")
    bank = detector.text_bank(object_name)
    parts = []
    for start in range(0, len(samples), detector.runtime.batch_size):
        chunk = samples[start : start + detector.runtime.batch_size]
        feats = detector.encode(chunk, bank, tta, refs=True)
        parts.append(_to_cpu(feats))
    for smp in samples:
        smp.tiles = smp.tiles[:0]  # the pixels are no longer needed
    return ReferenceBank([str(p) for p in references], samples, Features.cat(parts))


def score_against(
    detector: Detector, job: RayJob, sources: Sequence[str], bank: ReferenceBank
) -> list[Prediction | ImageDecodeError]:
    """Each image of `sources` scored with the reference set `bank` (set modes): image x
    gets ``score_set([x, *bank], ...)[0]``. The batch is encoded together."""
    prepared: list[Sample | ImageDecodeError] = []
    for i, src in enumerate(sources):
        try:
            prepared.append(detector.prepare(src, i))
        except ImageDecodeError as exc:
            prepared.append(exc)
    samples = [p for p in prepared if isinstance(p, Sample)]
    if not samples:
        return prepared  # type: ignore[return-value]  # all failures
    text = detector.text_bank(job.object_name)
    feats = _to_cpu(detector.encode(samples, text, job.tta, refs=True))
    context = ScoringContext(detector.settings, detector.image_size, detector.seed,
                             ref_count(job.mode, job.refs), detector.device)  # fmt: skip
    bounds = np.cumsum([0] + [smp.layout.num_tiles for smp in samples]).tolist()
    results: dict[int, Prediction] = {}
    for k, smp in enumerate(samples):
        mine = _tiles(feats, bounds[k], bounds[k + 1])
        s = score_set([smp, *bank.samples], Features.cat([mine, bank.features]), context)[0]
        size = capped(smp.size, job.max_map_side)
        amap = resize_map(s.map, size).clamp(0.0, 1.0).numpy().astype(np.float32)
        results[id(smp)] = Prediction(smp.source, s.score, amap, s.mode, smp.size)
    return [results[id(p)] if isinstance(p, Sample) else p for p in prepared]


def score_rows(
    detector: Detector,
    job: RayJob,
    sources: Sequence[str],
    names: Sequence[str],
    bank: ReferenceBank | None = None,
    paths: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Score one batch and write its maps (atomically) under ``job.out_dir/maps``.

    `paths`: where to read each source (default: the sources themselves; the runner
    passes absolute paths, since Ray workers need not share the driver's directory).
    Returns one row per source, in order: {source, name, score, width, height, error}
    (score NaN and error the reason for an unreadable input).
    """
    maps = Path(job.out_dir) / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    files = list(paths or sources)
    if bank is None:
        results = list(detector.iter_predict(files, job.object_name, job.tta,
                                             max_map_side=job.max_map_side))  # fmt: skip
    else:
        results = score_against(detector, job, files, bank)
    rows = []
    for source, name, file, res in zip(sources, names, files, results):
        if isinstance(res, Prediction):
            write_map(maps, name, res.anomaly_map, file if job.overlays else None)
            height, width = res.image_size or res.anomaly_map.shape
            rows.append(_row(source, name, res.score, width, height, ""))
        else:  # a Failure (alone) or an ImageDecodeError (set modes)
            rows.append(_row(source, name, math.nan, 0, 0, getattr(res, "reason", str(res))))
    return rows


def write_map(maps: Path, name: str, amap: np.ndarray, image_source: str | None) -> None:
    """`maps/NAME.npy` (and `maps/NAME.png` overlay when `image_source`), each written to
    a temporary name first and renamed, so a reader never sees a partial file."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(amap, dtype=np.float32))
    atomic_write(maps / f"{name}.npy", buf.getvalue())
    if image_source is not None:
        png = io.BytesIO()
        overlay(load_rgb(image_source), amap).save(png, format="PNG", compress_level=1)
        atomic_write(maps / f"{name}.png", png.getvalue())


class ScoreActor:
    """Ray Data callable class: one :class:`Detector` per actor (the model and the text
    embeddings load once per actor), then one call per batch of {source, name} rows."""

    def __init__(self, job: RayJob, bank: list | None = None) -> None:
        if job.threads:
            torch.set_num_threads(job.threads)
        self.job = job
        self.detector = Detector(**job.detector_kwargs)
        self.detector.text_bank(job.object_name)
        # `bank` is [ObjectRef] (wrapped, so Ray does not resolve it per call): fetched once
        self.bank = None if bank is None else _get(bank[0])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows as columns, plus `seconds`: this actor's wall time per image of the batch."""
        start = time.perf_counter()
        sources = [str(s) for s in batch["source"]]
        names = [str(n) for n in batch["name"]]
        paths = [str(p) for p in batch["path"]] if "path" in batch else sources
        rows = score_rows(self.detector, self.job, sources, names, self.bank, paths)
        out = {key: np.array([r[key] for r in rows]) for key in _ROW_KEYS}
        out["seconds"] = np.full(len(rows), (time.perf_counter() - start) / max(1, len(rows)))
        return out


# ----------------------------------------------------------------------------- driver


def run_ray(
    paths: Sequence[str | os.PathLike],
    object_name: str,
    out_dir: str | os.PathLike,
    detector_kwargs: dict[str, Any] | None = None,
    address: str | None = None,
    *,
    tta: bool | str = True,
    mode: str = "anoclip",
    refs: int | str | None = None,
    references: Sequence[str | os.PathLike] | None = None,
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    batch_size: int = 8,
    max_map_side: int | None = 2048,
    overlays: bool = False,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> RaySummary:
    """Score `paths` with an actor pool on Ray; results in `out_dir` (see the module doc).

    address: a Ray cluster ("ray://head:10001", "auto"); None starts or joins a local one
    (an already initialised Ray is used as it is). detector_kwargs: :class:`Detector`
    keywords, built once per actor (pass model names/paths, not loaded objects).
    mode/refs: "anoclip", or a set mode scored against the fixed `references` (needed:
    a set mode over all inputs is O(N²) and is refused). num_actors: default one per GPU
    when the cluster has GPUs, else one per `cpus_per_actor` CPUs. gpus_per_actor:
    default 1 when the cluster has GPUs, else 0. resume: skip sources already in
    scores.csv; overwrite: clear earlier results first. on_batch: called with each batch
    once committed (columns source, name, score, width, height, error, seconds = the
    actor's wall time per image), e.g. ``lambda b: bar.update(len(b["source"]))``.
    """
    kind = tta_kind(tta)
    ref_count(mode, refs)  # validates mode and refs
    _check_set_mode(mode, references)
    if batch_size < 1:
        raise UsageError("batch_size must be >= 1")
    out = Path(out_dir)
    _check_folder(out, resume, overwrite)  # every refusal before Ray is needed
    ray = require("ray", "ray", "running on Ray")
    require("ray.data", "ray", "running on Ray")
    _prepare_folder(out, overwrite)
    sources = [str(p) for p in paths]
    names = output_names([Path(p) for p in sources])
    done = read_finished(out / SCORES)
    todo = [(s, n) for s, n in zip(sources, names) if s not in done]
    skipped = len(sources) - len(todo)
    # one batch per call, decoded in the actor: no DataLoader worker processes
    kwargs = {"num_workers": 0, "batch_size": batch_size, **_absolute(detector_kwargs or {})}
    references = None if references is None else [str(Path(r).resolve()) for r in references]
    job = RayJob(object_name, str(out.resolve()), kwargs, kind, mode, refs, max_map_side,
                 overlays, max(1, int(cpus_per_actor)))  # fmt: skip
    started = time.perf_counter()
    scored = failed = actors = 0
    if todo:
        with _ray_session(ray, address, progress):
            gpus, actors = _plan_actors(ray.cluster_resources(), num_actors, cpus_per_actor,
                                        gpus_per_actor)  # fmt: skip
            bank_ref = None
            if references is not None:  # encoded once here, fetched once by each actor
                bank = encode_references(Detector(**kwargs), references, object_name, kind)
                bank_ref = [ray.put(bank)]
            scored, failed = _stream(ray, out, todo, job, bank_ref, actors, cpus_per_actor,
                                     gpus, batch_size, progress, on_batch)  # fmt: skip
    write_parquet(out)
    return RaySummary(scored, failed, skipped, time.perf_counter() - started, actors)


@contextmanager
def _ray_session(ray: Any, address: str | None, progress: bool) -> Iterator[None]:
    """Ray as it is when already initialised; else joined/started here and shut down after."""
    if ray.is_initialized():
        yield
        return
    ray.init(address=address, include_dashboard=False, log_to_driver=progress)
    try:
        yield
    finally:
        ray.shutdown()


def _stream(
    ray: Any,
    out: Path,
    todo: list[tuple[str, str]],
    job: RayJob,
    bank_ref: list | None,
    actors: int,
    cpus: float,
    gpus: float,
    batch_size: int,
    progress: bool,
    on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> tuple[int, int]:
    """Run the actor pool and append rows to scores.csv / errors.csv as batches return."""
    ray.data.DataContext.get_current().enable_progress_bars = progress
    rows = [{"source": s, "name": n, "path": str(Path(s).resolve())} for s, n in todo]
    ds = ray.data.from_items(rows)
    ds = ds.map_batches(
        ScoreActor, fn_constructor_kwargs={"job": job, "bank": bank_ref},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus, num_gpus=gpus,
    )  # fmt: skip
    scored = failed = 0
    with (
        _CsvAppend(out / SCORES, SCORE_COLUMNS) as scores,
        _CsvAppend(out / ERRORS, ERROR_COLUMNS) as errors,
    ):
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for k in range(len(batch["source"])):
                row = {key: batch[key][k] for key in _ROW_KEYS}
                if row["error"]:
                    errors.row(source=row["source"], reason=row["error"])
                    failed += 1
                else:
                    scores.row(source=row["source"], name=row["name"],
                               score=f"{float(row['score']):.8f}", width=int(row["width"]),
                               height=int(row["height"]))  # fmt: skip
                    scored += 1
            if on_batch is not None:
                on_batch(batch)
    if failed == 0 and _only_header(out / ERRORS):
        (out / ERRORS).unlink()
    return scored, failed


def write_parquet(out: Path) -> Path | None:
    """`scores.parquet` from the whole `scores.csv` (written atomically; None if no CSV)."""
    csv_path = out / SCORES
    if not csv_path.is_file():
        return None
    pa = require("pyarrow", "ray", "writing Parquet")
    pq = require("pyarrow.parquet", "ray", "writing Parquet")
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    table = pa.table({
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "name": pa.array([r["name"] for r in rows], pa.string()),
        "score": pa.array([float(r["score"]) for r in rows], pa.float64()),
        "width": pa.array([int(r["width"]) for r in rows], pa.int64()),
        "height": pa.array([int(r["height"]) for r in rows], pa.int64()),
    })  # fmt: skip
    target = out / PARQUET
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)
    return target


# ----------------------------------------------------------------------------- helpers


_ROW_KEYS = ("source", "name", "score", "width", "height", "error")


def _row(source: str, name: str, score: float, width: int, height: int, error: str) -> dict:
    return dict(zip(_ROW_KEYS, (source, name, float(score), int(width), int(height), error)))


def _absolute(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Detector keywords with a model config / checkpoint given as an existing relative
    file made absolute (Ray workers need not run in the driver's directory)."""
    out = dict(kwargs)
    for key in ("model", "pretrained"):
        value = out.get(key)
        if isinstance(value, (str, os.PathLike)) and Path(value).is_file():
            out[key] = str(Path(value).resolve())
    return out


def _check_set_mode(mode: str, references: Sequence | None) -> None:
    if mode == "anoclip":
        if references is not None:
            raise UsageError("references are used by mode 'dual' or 'mutual' only")
        return
    if references is None:
        raise UsageError(
            f"mode {mode!r} over all inputs compares every image with every other: O(N²) "
            "work and every image's tokens in one process, which does not scale out on Ray. "
            "Pass references=[...] (a fixed set of normal images, encoded once and shared "
            "through the object store) or run it in one process (anoclip detect --mode)."
        )


def _plan_actors(
    resources: dict[str, float], num_actors: int | None, cpus: float, gpus: float | None
) -> tuple[float, int]:
    """(GPUs per actor, number of actors) for a cluster with `resources`."""
    cluster_gpus = resources.get("GPU", 0.0)
    if gpus is None:
        gpus = 1.0 if cluster_gpus > 0 else 0.0
    if num_actors is None:
        if gpus > 0:
            num_actors = max(1, int(cluster_gpus // gpus))
        else:
            num_actors = max(1, int(resources.get("CPU", 1.0) // max(cpus, 1e-9)))
    if num_actors < 1:
        raise UsageError("num_actors must be >= 1")
    return gpus, num_actors


def _check_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse before anything is written: both flags, or earlier results with neither."""
    if resume and overwrite:
        raise UsageError("resume and overwrite exclude each other")
    scores = out / SCORES
    if not (resume or overwrite) and scores.is_file() and scores.stat().st_size > 0:
        raise ResultFolderError(f"{out} holds earlier results; resume=True or overwrite=True")


def _prepare_folder(out: Path, overwrite: bool) -> None:
    if overwrite:
        clear_folder(out)
    (out / "maps").mkdir(parents=True, exist_ok=True)


def clear_folder(out: Path) -> None:
    """Remove the results of an earlier run from `out` (scores, maps, errors, Parquet)."""
    clear_results(out)
    (out / PARQUET).unlink(missing_ok=True)


def _to_cpu(f: Features) -> Features:
    tokens = None if f.ref_tokens is None else f.ref_tokens.cpu()
    return Features(f.text_cos.cpu(), f.cls_cos.cpu(), f.cls.cpu(), f.grid, tokens)


def _tiles(f: Features, start: int, stop: int) -> Features:
    """The features of tiles [start, stop)."""
    tokens = None if f.ref_tokens is None else f.ref_tokens[start:stop]
    part = slice(int(start), int(stop))
    return Features(f.text_cos[part], f.cls_cos[part], f.cls[part], f.grid, tokens)


def _get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


def _only_header(path: Path) -> bool:
    return path.is_file() and len(path.read_text(encoding="utf-8").splitlines()) <= 1


class _CsvAppend:
    """A CSV file appended to, flushed after every row. A new file gets `header`; an
    existing one keeps its own columns (rows are written by column name, missing cells
    empty: e.g. the decision columns that :mod:`anoclip.results.writer` fills in later)."""

    def __init__(self, path: Path, header: Sequence[str]) -> None:
        fresh = not path.exists() or path.stat().st_size == 0
        self.columns = tuple(header) if fresh else _header(path)
        self._file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._file, lineterminator="\n")
        if fresh:
            self._csv.writerow(self.columns)
            self._file.flush()

    def row(self, **cells: object) -> None:
        self._csv.writerow([cells.get(c, "") for c in self.columns])
        self._file.flush()

    def __enter__(self) -> _CsvAppend:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _header(path: Path) -> tuple[str, ...]:
    with open(path, newline="", encoding="utf-8") as f:
        return tuple(next(csv.reader(f), ()))
