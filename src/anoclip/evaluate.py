"""Evaluation on labelled test sets: per-category metrics, tables, resumable runs.

    OUT/categories/CAT.json   one finished category: metrics, per-image scores, settings
    OUT/metrics.csv           category,image_auroc,...,aupro (+ a `mean` row), in [0, 1]
    OUT/metrics.md            the same table in %, beside METHOD.md's published numbers
    OUT/scores.csv            category,source,label,score (label 1 = anomalous)

A category whose JSON exists with the same settings is loaded instead of recomputed, so
an interrupted evaluation resumes at the first unfinished category.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics as M
from .datasets import MVTEC_COUNTS, VISA_CATEGORIES, Item, MaskLoader, load_dataset
from .detector import Detector
from .errors import EvaluationError
from .preprocess import resize_map
from .published import CATEGORY_ANCHORS, Published, means_for
from .records import Failure
from .settings import Mode, tta_kind
from .settings import fingerprint as settings_fingerprint

SETTING_CLASS = {"anoclip": "TF-1IMG", "dual": "PAIR", "mutual": "BATCH"}
METRIC_LABELS = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO")


@dataclass
class CategoryResult:
    category: str
    metrics: M.Metrics
    rows: list[tuple[str, int, float]]  # source, label, score
    seconds: float
    reused: bool = False


@dataclass
class EvalOptions:
    """How the evaluation is run and measured (beyond the detector's settings)."""

    dataset: str
    root: str
    categories: Sequence[str] | None = None
    tta: bool | str = True
    mode: Mode = "anoclip"
    refs: int | str | None = None
    eval_size: int | None = None  # shorter side of maps/masks; None: model resolution
    ap_mode: str = "step"
    strict: bool = True
    limit: int | None = None  # smoke tests: a stratified subset of this many per category


def fingerprint(detector: Detector, opts: EvalOptions) -> dict:
    """What determines a category's numbers (runtime choices such as the batch size do
    not): a finished category is reused only if equal."""
    bb = detector.backbone
    return settings_fingerprint(
        detector.settings, model=bb.name, pretrained=bb.pretrained, seed=detector.seed,
        tta=tta_kind(opts.tta), mode=opts.mode, refs=opts.refs, eval_size=opts.eval_size,
        ap_mode=opts.ap_mode, limit=opts.limit,
    )  # fmt: skip


def subset(items: list[Item], limit: int | None) -> list[Item]:
    """A deterministic, label-stratified subset of about `limit` items (all if None)."""
    if limit is None or limit >= len(items):
        return items
    keep: list[int] = []
    for label, want in ((0, limit // 2), (1, limit - limit // 2)):
        group = [k for k, item in enumerate(items) if item.label == label]
        take = min(max(1, want), len(group))
        keep += [group[int(j * len(group) / take)] for j in range(take)]
    return [items[k] for k in sorted(keep)]


def eval_shape(model_shape: tuple[int, int], eval_size: int | None) -> tuple[int, int]:
    if eval_size is None:
        return model_shape
    h, w = model_shape
    scale = eval_size / min(h, w)
    return (round(h * scale), round(w * scale))


def score_category(
    detector: Detector,
    items: Sequence[Item],
    category: str,
    opts: EvalOptions,
    progress: bool = True,
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Scores `[N]`, maps and masks (lists of `[h, w]` at evaluation size) of a category."""
    masks_at = MaskLoader(strict=opts.strict)
    scores = np.zeros(len(items), dtype=np.float64)
    maps: list[np.ndarray] = [np.empty(0)] * len(items)
    masks: list[np.ndarray] = [np.empty(0)] * len(items)
    paths = [str(i.image) for i in items]
    stream = detector.iter_scored(
        paths, category, opts.tta, mode=opts.mode, refs=opts.refs, progress=progress
    )
    for out in stream:
        if isinstance(out, Failure):
            raise EvaluationError(f"cannot read test image {out.source}: {out.reason}")
        k, score, model_map = out.sample.index, out.score, out.map
        shape = eval_shape(tuple(model_map.shape), opts.eval_size)
        scores[k] = score
        maps[k] = resize_map(model_map, shape).numpy().astype(np.float32)
        masks[k] = masks_at.load(items[k], shape)
    return scores, maps, masks


def evaluate(
    detector: Detector,
    opts: EvalOptions,
    out_dir: str | os.PathLike,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[CategoryResult]:
    """Evaluate every category of the dataset; writes and returns the per-category results."""
    data = load_dataset(opts.dataset, opts.root, opts.categories, opts.strict)
    out = Path(out_dir)
    (out / "categories").mkdir(parents=True, exist_ok=True)
    finger = fingerprint(detector, opts)
    results: list[CategoryResult] = []
    for category, items in data.items():
        items = subset(items, opts.limit)
        done = _load_done(out / "categories" / f"{category}.json", finger)
        if done is not None:
            log(f"{category}: finished earlier, reusing {out / 'categories' / category}.json")
            results.append(done)
            continue
        started = time.perf_counter()
        scores, maps, masks = score_category(detector, items, category, opts, progress)
        labels = np.array([i.label for i in items])
        has_masks = all(i.mask is not None for i in items if i.label == 1)
        metrics = M.compute(
            labels, scores, masks if has_masks else None, maps if has_masks else None,
            opts.ap_mode,
        )  # fmt: skip
        rows = [(str(i.image), int(i.label), float(s)) for i, s in zip(items, scores)]
        result = CategoryResult(category, metrics, rows, time.perf_counter() - started)
        _save_done(out / "categories" / f"{category}.json", result, finger)
        results.append(result)
        write_tables(results, out, detector, opts)
        log(f"{category}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.as_dict().items()))
    write_tables(results, out, detector, opts)
    return results


# ------------------------------------------------------------------ persistence


def _save_done(path: Path, result: CategoryResult, finger: dict) -> None:
    payload = {
        "fingerprint": finger,
        "category": result.category,
        "metrics": result.metrics.as_dict(),
        "rows": result.rows,
        "seconds": result.seconds,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_nan_safe))
    os.replace(tmp, path)


def _nan_safe(x: object) -> object:
    return None if isinstance(x, float) and math.isnan(x) else str(x)


def _load_done(path: Path, finger: dict) -> CategoryResult | None:
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if json.loads(json.dumps(finger, default=str)) != payload.get("fingerprint"):
        return None
    values = {k: (math.nan if v is None else float(v)) for k, v in payload["metrics"].items()}
    rows = [(str(s), int(lab), float(v)) for s, lab, v in payload["rows"]]
    return CategoryResult(payload["category"], M.Metrics(**values), rows, payload["seconds"], True)


def mean_row(results: Sequence[CategoryResult]) -> dict[str, float]:
    """Unweighted mean over categories (categories where a metric is undefined are skipped)."""
    out = {}
    for name in M.NAMES:
        vals = [getattr(r.metrics, name) for r in results]
        vals = [v for v in vals if not math.isnan(v)]
        out[name] = float(np.mean(vals)) if vals else math.nan
    return out


def write_tables(
    results: Sequence[CategoryResult], out: Path, detector: Detector, opts: EvalOptions
) -> None:
    _write_atomic(out / "metrics.csv", _metrics_csv(results))
    _write_atomic(out / "scores.csv", _scores_csv(results))
    _write_atomic(out / "metrics.md", metrics_markdown(results, detector, opts))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _fmt(v: float, scale: float = 1.0, digits: int = 6) -> str:
    return "nan" if math.isnan(v) else f"{v * scale:.{digits}f}"


def _metrics_csv(results: Sequence[CategoryResult]) -> str:
    lines = [",".join(("category", *M.NAMES))]
    for r in results:
        lines.append(",".join([r.category] + [_fmt(v) for v in r.metrics.as_dict().values()]))
    if results:
        lines.append(",".join(["mean"] + [_fmt(v) for v in mean_row(results).values()]))
    return "\n".join(lines) + "\n"


def _scores_csv(results: Sequence[CategoryResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("category", "source", "label", "score"))
    for r in results:
        for source, label, score in r.rows:
            w.writerow((r.category, source, label, f"{score:.8f}"))
    return buf.getvalue()


def setting_class(opts: EvalOptions) -> str:
    """TF-1IMG / PAIR / BATCH (METHOD.md §6), +TTA when test-time adaptation ran."""
    tag = SETTING_CLASS.get(opts.mode, opts.mode)
    if opts.mode == "mutual" and opts.refs not in (None, "all"):
        tag = f"BATCH (k={opts.refs})"
    kind = tta_kind(opts.tta)
    return tag if kind == "none" else f"{tag}+TTA({kind})"


def metrics_markdown(
    results: Sequence[CategoryResult], detector: Detector, opts: EvalOptions
) -> str:
    bb = detector.backbone
    size = "model input resolution" if opts.eval_size is None else f"shorter side {opts.eval_size}"
    lines = [
        f"# anoclip evaluation: {opts.dataset}",
        "",
        f"- model `{bb.name}`, weights `{bb.pretrained}`, seed {detector.seed}, mode "
        f"`{opts.mode}`"
        + (f" (refs {opts.refs})" if opts.refs else "")
        + f", setting class **{setting_class(opts)}**",
        f"- metrics at {size} (image {bb.image_size} px); AP {opts.ap_mode}-wise; AUPRO with "
        "FPR < 0.3 rescaled to [0, 1] (AnoVL/MuSc convention); values in %",
    ]
    if opts.limit:
        lines.append(f"- **subset**: about {opts.limit} images per category (smoke test only)")
    if bb.random_weights:
        lines += [
            "",
            "> **Random weights**: these numbers say nothing about detection quality. They "
            "are not chance level either: random features still carry shortcuts such as "
            "image brightness (on the shared screw split brightness alone separates good "
            "from defective images).",
        ]
    header = "| category | " + " | ".join(METRIC_LABELS) + " | images | seconds |"
    lines += ["", header, "|---" * (len(METRIC_LABELS) + 3) + "|"]
    for r in results:
        vals = " | ".join(_fmt(v, 100, 1) for v in r.metrics.as_dict().values())
        lines.append(f"| {r.category} | {vals} | {len(r.rows)} | {r.seconds:.0f} |")
    if results:
        vals = " | ".join(_fmt(v, 100, 1) for v in mean_row(results).values())
        lines.append(f"| **mean** ({len(results)} categories) | {vals} | | |")
    anchors = [
        (c, ref) for r in results for c in [r.category] for ref in CATEGORY_ANCHORS.get(c, ())
    ]
    if anchors:
        lines += ["", "## Per-category published numbers (METHOD.md §7)", ""]
        lines += _published_table([(c, ref) for c, ref in anchors])
    means = means_for(opts.dataset)
    if means:
        full = (
            opts.dataset == "mvtec"
            and len(results) == len(MVTEC_COUNTS)
            or opts.dataset == "visa"
            and len(results) == len(VISA_CATEGORIES)
        )
        note = "" if full else " (compare only a full-dataset mean with these; here compare rows)"
        lines += ["", f"## Dataset means, published numbers (METHOD.md §7){note}", ""]
        lines += _published_table([("mean", ref) for ref in means])
    return "\n".join(lines) + "\n"


def _published_table(rows: Sequence[tuple[str, Published]]) -> list[str]:
    out = ["| category | method | class | backbone | source | " + " | ".join(METRIC_LABELS) + " |"]
    out.append("|---" * (len(METRIC_LABELS) + 5) + "|")
    for cat, ref in rows:
        vals = " | ".join(f"{ref.values[k]:.1f}" if k in ref.values else "–" for k in M.NAMES)
        out.append(
            f"| {cat} | {ref.method} | {ref.setting} | {ref.backbone} | ({ref.source}) | {vals} |"
        )
    return out
