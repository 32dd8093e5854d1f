"""Evaluation on labelled test sets: per-category metrics, tables, resumable runs.

    OUT/categories/CAT.json   one finished category: metrics, per-image scores, settings,
                              label-free thresholds and their confusion counts
    OUT/metrics.csv           category,image_auroc,...,aupro, then the label-free columns
                              image_precision_normal,...,pixel_f1_unsupervised (+ a `mean`
                              row), in [0, 1]
    OUT/metrics.md            the same in %, beside METHOD.md's published numbers
    OUT/scores.csv            category,source,label,score (label 1 = anomalous)
    OUT/maps/CAT/NAME.npy     float16 maps at evaluation size (for the report)
    OUT/report.html           the labelled report: decisions, ground-truth outlines, metrics

Label-free decisions (METHOD.md P8: never fitted on test labels). Beside F1-max — the best
F1 over all thresholds, picked WITH the labels, so an upper bound no deployment reaches —
each category is decided by thresholds a user could actually have:

* ``normal``: calibrated on the category's known-good training images (MVTec
  ``CAT/train/good``; folder layout ``BASE/train/good`` when present; none for VisA),
  scored exactly like the test images (:meth:`Detector.calibrate`; in dual/mutual mode as
  their own set, leave-one-out), at the target false-reject rate α (default 1 %);
* ``unsupervised``: median + 3.5·1.4826·MAD of the test set's own scores (and map maxima),
  which uses the test images but not their labels.

Their precision / recall / F1 are counted at image level (score > t) and pixel level
(map > t_px, pixels pooled over the category), and the image false-reject rate FP/(FP+TN).

A category whose JSON exists with the same settings (and its maps) is loaded instead of
recomputed, so an interrupted evaluation resumes at the first unfinished category.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anoclip.data.datasets import (
    GOOD,
    MVTEC_COUNTS,
    VISA_CATEGORIES,
    Item,
    MaskLoader,
    load_dataset,
)
from anoclip.data.listing import expand_inputs, output_names
from anoclip.data.preprocess import resize_map
from anoclip.decide.calibrate import (
    DEFAULT_FALSE_REJECT,
    MIN_NORMALS,
    Counts,
    calibrate_unsupervised,
    image_metrics,
    pixel_metrics,
)
from anoclip.decide.unlabeled import MIN_UNLABELED
from anoclip.detector import Detector
from anoclip.errors import EvaluationError
from anoclip.evaluation import metrics as M
from anoclip.evaluation.published import CATEGORY_ANCHORS, Published, means_for
from anoclip.records import Failure
from anoclip.settings import Mode, tta_kind
from anoclip.settings import fingerprint as settings_fingerprint
from anoclip.threshold import Threshold, decide, ratio

SETTING_CLASS = {"anoclip": "TF-1IMG", "dual": "PAIR", "mutual": "BATCH"}
METRIC_LABELS = ("I-AUROC", "I-AP", "I-F1max", "P-AUROC", "P-AP", "P-F1max", "AUPRO")
SOURCES = ("normal", "unsupervised")  # label-free threshold sources, preferred first
LF_RATES = (
    ("image", "escapes"), ("image", "flagged"),
    ("image", "precision"), ("image", "recall"), ("image", "f1"), ("image", "frr"),
    ("pixel", "precision"), ("pixel", "recall"), ("pixel", "f1"),
)  # fmt: skip
LF_NAMES = tuple(f"{lvl}_{rate}_{src}" for src in SOURCES for lvl, rate in LF_RATES)


@dataclass
class LabelFree:
    """One label-free threshold of a category and its confusion counts against the labels:
    image (defect ⟺ score > t_d), flagged (review or defect ⟺ score > t_r; t_d without a
    review band) and pixel (None without masks or without a pixel threshold).

        escapes = defective images called ok = FN/(TP+FN) of `flagged`
        flagged = good images called review or defect = FP/(FP+TN) of `flagged`"""

    threshold: Threshold
    image: Counts
    pixel: Counts | None = None
    flagged: Counts | None = None

    def rates(self) -> dict[str, float]:
        """{level_rate: value} for LF_RATES (NaN where the level is missing)."""
        out = {}
        band = self.flagged or self.image
        for level, rate in LF_RATES:
            counts = self.image if level == "image" else self.pixel
            if rate == "escapes":
                value = 1.0 - band.recall if band.tp + band.fn else math.nan
            elif rate == "flagged":
                value = band.false_reject_rate
            else:
                name = "false_reject_rate" if rate == "frr" else rate
                value = math.nan if counts is None else getattr(counts, name)
            out[f"{level}_{rate}"] = value
        return out


@dataclass
class CategoryResult:
    category: str
    metrics: M.Metrics
    rows: list[tuple[str, int, float]]  # source, label, score
    seconds: float
    reused: bool = False
    label_free: dict[str, LabelFree] = field(default_factory=dict)  # SOURCES -> result

    def label_free_values(self) -> dict[str, float]:
        """LF_NAMES -> value (NaN for a source that was not available)."""
        out = dict.fromkeys(LF_NAMES, math.nan)
        for src, lf in self.label_free.items():
            out.update({f"{k}_{src}": v for k, v in lf.rates().items()})
        return out

    def preferred(self) -> LabelFree | None:
        """The threshold that decides the report: known-good images, else unsupervised."""
        return next((self.label_free[s] for s in SOURCES if s in self.label_free), None)


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
    false_reject: float = DEFAULT_FALSE_REJECT  # target α of the known-good thresholds
    report: bool = True  # write OUT/report.html
    train_bank: bool = False  # each category's train/good images form its bank of normal patches


def fingerprint(detector: Detector, opts: EvalOptions) -> dict:
    """What determines a category's numbers (runtime choices such as the batch size do
    not): a finished category is reused only if equal."""
    model, weights, _ = identity(detector)
    return settings_fingerprint(
        detector.settings, model=model, pretrained=weights, seed=detector.seed,
        tta=tta_kind(opts.tta), mode=opts.mode, refs=opts.refs, eval_size=opts.eval_size,
        ap_mode=opts.ap_mode, limit=opts.limit, false_reject=opts.false_reject,
        **({"train_bank": True} if opts.train_bank else {}),
    )  # fmt: skip


def identity(detector: Detector) -> tuple[str | None, str | None, bool]:
    """(CLIP model, weights as given, random weights?); None, None, False without CLIP."""
    bb = detector.backbone
    return (None, None, False) if bb is None else (bb.name, bb.pretrained, bb.random_weights)


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
    bank = None
    if opts.train_bank:
        normals = normal_images(opts.dataset, opts.root, category)
        if not normals:
            raise EvaluationError(f"{category}: --train-bank needs train/good images, none found")
        bank = detector.build_bank([str(p) for p in normals], category)
    stream = detector.iter_scored(
        paths, category, opts.tta, mode=opts.mode, refs=opts.refs, progress=progress, bank=bank
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
    data = {category: subset(items, opts.limit) for category, items in data.items()}
    out = Path(out_dir)
    (out / "categories").mkdir(parents=True, exist_ok=True)
    finger = fingerprint(detector, opts)
    results: list[CategoryResult] = []
    for category, items in data.items():
        path = out / "categories" / f"{category}.json"
        done = _load_done(path, finger, map_files(out, category, items))
        if done is not None:
            log(f"{category}: finished earlier, reusing {path}")
            results.append(done)
            continue
        result = run_category(detector, items, category, opts, out, progress)
        _save_done(path, result, finger)
        results.append(result)
        write_tables(results, out, detector, opts)
        log(f"{category}: {summary(result)}")
    write_tables(results, out, detector, opts)
    if opts.report and results:
        write_eval_report(results, data, out, detector, opts)
    return results


def run_category(
    detector: Detector,
    items: Sequence[Item],
    category: str,
    opts: EvalOptions,
    out: Path,
    progress: bool = True,
) -> CategoryResult:
    """Score one category, its metrics and label-free decisions; saves its maps."""
    started = time.perf_counter()
    scores, maps, masks = score_category(detector, items, category, opts, progress)
    labels = np.array([i.label for i in items])
    has_masks = all(i.mask is not None for i in items if i.label == 1)
    metrics = M.compute(
        labels, scores, masks if has_masks else None, maps if has_masks else None,
        opts.ap_mode,
    )  # fmt: skip
    decided = label_free(detector, category, opts, labels, scores, maps,
                         masks if has_masks else None)  # fmt: skip
    save_maps(map_files(out, category, items), maps)
    rows = [(str(i.image), int(i.label), float(s)) for i, s in zip(items, scores)]
    seconds = time.perf_counter() - started
    return CategoryResult(category, metrics, rows, seconds, label_free=decided)


def summary(result: CategoryResult) -> str:
    """One log line: the metrics, then the label-free image F1 of each source."""
    text = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics.as_dict().items())
    for src, lf in result.label_free.items():
        text += f", image F1 {lf.image.f1:.3f} at the {src} threshold"
    return text


# ------------------------------------------------------------------ label-free decisions


def normal_images(dataset: str, root: str | os.PathLike, category: str) -> list[Path]:
    """Known-good training images of a category (never test images), or [] if none:
    MVTec ROOT/CAT/train/good; folder BASE/train/good with BASE = ROOT (one category) or
    ROOT/CAT; VisA: none (its train split has hundreds per category; not used)."""
    root = Path(root)
    if dataset == "mvtec":
        folder = root / category / "train" / GOOD
    elif dataset == "folder":
        base = root if (root / GOOD).is_dir() else root / category
        folder = base / "train" / GOOD
    else:
        return []
    return expand_inputs([folder]) if folder.is_dir() else []


def judge(
    threshold: Threshold,
    labels: np.ndarray,
    scores: np.ndarray,
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None,
) -> LabelFree:
    """Counts of score > t_d and of score > t_r against the labels, and of map > t_px
    against the masks."""
    y = np.asarray(labels, bool)
    image = image_metrics(y, scores, threshold)
    review = threshold.review_threshold
    flagged = image if review is None else image_metrics(y, scores, review)
    pixel = None
    if masks is not None and threshold.pixel_threshold is not None:
        pixel = pixel_metrics(masks, maps, threshold.pixel_threshold)
    return LabelFree(threshold, image, pixel, flagged)


def label_free(
    detector: Detector,
    category: str,
    opts: EvalOptions,
    labels: np.ndarray,
    scores: np.ndarray,
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None,
) -> dict[str, LabelFree]:
    """The category judged at its label-free thresholds (SOURCES that are available).

    normal: :meth:`Detector.calibrate` on :func:`normal_images` (≥ 2 needed), same mode,
    refs and TTA as the test images; unsupervised: the test set's own scores (≥ 3)."""
    out = {}
    normals = normal_images(opts.dataset, opts.root, category)
    if len(normals) >= MIN_NORMALS and not opts.train_bank:  # bank images would match themselves
        t = detector.calibrate(
            [str(p) for p in normals], category, opts.false_reject, opts.tta, mode=opts.mode,
            refs=opts.refs,
        )  # fmt: skip
        out["normal"] = judge(t, labels, scores, maps, masks)
    if len(scores) >= MIN_UNLABELED:
        t = calibrate_unsupervised(scores, maps, settings=detector.fingerprint(
            category, opts.tta, opts.mode, opts.refs))  # fmt: skip
        out["unsupervised"] = judge(t, labels, scores, maps, masks)
    return out


def map_files(out: Path, category: str, items: Sequence[Item]) -> list[Path]:
    """OUT/maps/CAT/NAME.npy of each item (names as `anoclip detect` gives them)."""
    names = output_names([Path(i.image) for i in items])
    return [out / "maps" / category / f"{name}.npy" for name in names]


def save_maps(files: Sequence[Path], maps: Sequence[np.ndarray]) -> None:
    """Maps at evaluation size as float16 .npy (atomically), for the report."""
    for path, values in zip(files, maps, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(values, dtype=np.float16))
        os.replace(tmp, path)


# ------------------------------------------------------------------ persistence


def _save_done(path: Path, result: CategoryResult, finger: dict) -> None:
    payload = {
        "fingerprint": finger,
        "category": result.category,
        "metrics": result.metrics.as_dict(),
        "rows": result.rows,
        "seconds": result.seconds,
        "label_free": {src: _lf_dict(lf) for src, lf in result.label_free.items()},
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_nan_safe))
    os.replace(tmp, path)


def _nan_safe(x: object) -> object:
    return None if isinstance(x, float) and math.isnan(x) else str(x)


def _load_done(path: Path, finger: dict, maps: Sequence[Path] = ()) -> CategoryResult | None:
    """A finished category: same fingerprint, label-free results present (older files
    lack them and are recomputed) and its maps on disk."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if json.loads(json.dumps(finger, default=str)) != payload.get("fingerprint"):
        return None
    if "label_free" not in payload or not all(Path(m).is_file() for m in maps):
        return None
    values = {k: (math.nan if v is None else float(v)) for k, v in payload["metrics"].items()}
    rows = [(str(s), int(lab), float(v)) for s, lab, v in payload["rows"]]
    decided = {src: _lf_from(d) for src, d in payload["label_free"].items()}
    return CategoryResult(payload["category"], M.Metrics(**values), rows, payload["seconds"],
                          True, decided)  # fmt: skip


def _counts_dict(c: Counts | None) -> dict[str, int] | None:
    return None if c is None else {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn}


def _lf_dict(lf: LabelFree) -> dict[str, Any]:
    """JSON form: the threshold (as threshold.json writes it) and the raw counts."""
    return {
        "threshold": lf.threshold.as_dict(),
        "image": _counts_dict(lf.image),
        "pixel": _counts_dict(lf.pixel),
        "rates": lf.rates(),
    }


def _lf_from(d: Mapping[str, Any]) -> LabelFree:
    t = d["threshold"]
    threshold = Threshold(
        t["method"], float(t["image_threshold"]), t.get("pixel_threshold"), t.get("inputs", {}),
        t.get("anoclip_version", ""), t.get("settings", {}),
    )  # fmt: skip
    pixel = None if d.get("pixel") is None else Counts(**d["pixel"])
    return LabelFree(threshold, Counts(**d["image"]), pixel)


def mean_row(results: Sequence[CategoryResult]) -> dict[str, float]:
    """Unweighted mean over categories (categories where a metric is undefined are skipped),
    of the metrics (M.NAMES) and the label-free rates (LF_NAMES)."""
    table = [{**r.metrics.as_dict(), **r.label_free_values()} for r in results]
    out = {}
    for name in (*M.NAMES, *LF_NAMES):
        vals = [row[name] for row in table if not math.isnan(row[name])]
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
    lines = [",".join(("category", *M.NAMES, *LF_NAMES))]
    for r in results:
        values = [*r.metrics.as_dict().values(), *r.label_free_values().values()]
        lines.append(",".join([r.category] + [_fmt(v) for v in values]))
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
    model, weights, random_weights = identity(detector)
    size = "model input resolution" if opts.eval_size is None else f"shorter side {opts.eval_size}"
    lines = [
        f"# anoclip evaluation: {opts.dataset}",
        "",
        f"- model `{model or 'none (visual references alone)'}`, weights `{weights}`, "
        f"seed {detector.seed}, mode "
        f"`{opts.mode}`"
        + (f" (refs {opts.refs})" if opts.refs else "")
        + f", setting class **{setting_class(opts)}**",
        f"- metrics at {size} (image {detector.image_size} px); AP {opts.ap_mode}-wise; AUPRO with "
        "FPR < 0.3 rescaled to [0, 1] (AnoVL/MuSc convention); values in %",
    ]
    if opts.limit:
        lines.append(f"- **subset**: about {opts.limit} images per category (smoke test only)")
    if random_weights:
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
        vals = " | ".join(_fmt(mean_row(results)[k], 100, 1) for k in M.NAMES)
        lines.append(f"| **mean** ({len(results)} categories) | {vals} | | |")
    lines += label_free_markdown(results, opts)
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


# ------------------------------------------------------------------ label-free tables, report

LF_LABELS = ("I-t", "escapes", "flagged", "I-precision", "I-recall", "I-F1", "I-F1max",
             "I-FRR", "P-t", "P-precision", "P-recall", "P-F1", "P-F1max")  # fmt: skip


def _lf_cells(values: Mapping[str, float], src: str, f1max: tuple[float, float]) -> list[str]:
    """The % cells of one source's rates in LF_LABELS order, F1-max beside each level's F1
    (the threshold cells I-t and P-t left empty for the caller)."""
    band = [_fmt(values[f"image_{r}_{src}"], 100, 1) for r in ("escapes", "flagged")]
    pct = [_fmt(values[f"image_{r}_{src}"], 100, 1) for r in ("precision", "recall", "f1")]
    pix = [_fmt(values[f"pixel_{r}_{src}"], 100, 1) for r in ("precision", "recall", "f1")]
    frr = _fmt(values[f"image_frr_{src}"], 100, 1)
    return ["", *band, *pct, _fmt(f1max[0], 100, 1), frr, "", *pix, _fmt(f1max[1], 100, 1)]


def label_free_markdown(results: Sequence[CategoryResult], opts: EvalOptions) -> list[str]:
    """metrics.md section: precision / recall / F1 of the label-free thresholds (%), with
    F1-max (label-chosen, an upper bound) beside them and the thresholds themselves."""
    lines = [
        "",
        "## Label-free decisions (thresholds never fitted on test labels)",
        "",
        f"- **normal**: image and pixel thresholds from the known-good images of "
        f"`CAT/train/good`, scored like the test images, at a target false-reject rate of "
        f"{opts.false_reject:g} (90 % confidence); defect ⟺ score > I-t, pixel ⟺ map > P-t; "
        "the review bound is an order statistic of the normal scores.",
        "- **unsupervised**: the test set's own scores (and map maxima): half-sample mode c "
        "and the spread σ_L below it; review above c + 1.75σ_L, defect above I-t = c + 4σ_L.",
        "- escapes: defective images called ok; flagged: good images called review or defect "
        "(the decisions a person sees); precision / recall / F1 / FRR: of defect ⟺ score > I-t.",
        "- I-F1max / P-F1max: the best F1 over all thresholds, chosen with the labels (an "
        "upper bound, not a usable threshold). I-FRR: good test images called defect.",
        "",
        "| category | threshold | normals | " + " | ".join(LF_LABELS) + " |",
        "|---" * (len(LF_LABELS) + 3) + "|",
    ]
    for r in results:
        values = r.label_free_values()
        f1max = (r.metrics.image_f1max, r.metrics.pixel_f1max)
        for src in SOURCES:
            lf = r.label_free.get(src)
            if lf is None:
                lines.append(f"| {r.category} | {src} | – |" + " – |" * len(LF_LABELS))
                continue
            cells = _lf_cells(values, src, f1max)
            cells[LF_LABELS.index("I-t")] = f"{lf.threshold.image_threshold:.4g}"
            t_px = lf.threshold.pixel_threshold
            cells[LF_LABELS.index("P-t")] = "–" if t_px is None else f"{t_px:.4g}"
            normals = lf.threshold.inputs.get("n_normal", "–")
            lines.append(f"| {r.category} | {src} | {normals} | " + " | ".join(cells) + " |")
    if results:
        mean = mean_row(results)
        for src in SOURCES:
            cells = _lf_cells(mean, src, (mean["image_f1max"], mean["pixel_f1max"]))
            cells[LF_LABELS.index("I-t")] = cells[LF_LABELS.index("P-t")] = ""
            lines.append(f"| **mean** | {src} | | " + " | ".join(cells) + " |")
    return lines


def report_table(results: Sequence[CategoryResult]) -> dict[str, dict[str, Any]]:
    """The report's metrics table: one row per (category, threshold source)."""
    table = {}
    for r in results:
        for src, lf in r.label_free.items():
            rates = lf.rates()
            table[f"{r.category} · {src}"] = {
                "threshold": lf.threshold.image_threshold,
                "pixel_threshold": _or_nan(lf.threshold.pixel_threshold),
                **{k: rates[k] for k in ("image_precision", "image_recall", "image_f1")},
                "image_f1max": r.metrics.image_f1max,
                "image_false_reject_rate": rates["image_frr"],
                **{k: rates[k] for k in ("pixel_precision", "pixel_recall", "pixel_f1")},
                "pixel_f1max": r.metrics.pixel_f1max,
            }
    return table


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def write_eval_report(
    results: Sequence[CategoryResult],
    data: Mapping[str, Sequence[Item]],
    out: Path,
    detector: Detector,
    opts: EvalOptions,
) -> Path:
    """OUT/report.html over every evaluated image: decisions of each category's preferred
    label-free threshold, ground-truth outlines, the per-category metrics table. Its
    threshold line and pixel outlines need one threshold: drawn for a single category."""
    from anoclip.results.overlays import FIXED_SCALE, calibrated_scale
    from anoclip.results.report import ReportRow, write_report

    rows = []
    for r in results:
        items, lf = data[r.category], r.preferred()
        t = None if lf is None else lf.threshold
        for item, (_, label, score), path in zip(items, r.rows, map_files(out, r.category, items)):
            rows.append(ReportRow(
                source=item.image, name=f"{r.category}/{item.defect}/{Path(item.image).stem}",
                score=score, decision=None if t is None else decide(score, t),
                ratio=None if t is None else ratio(score, t), map=path, mask=item.mask,
                label=item.defect, anomalous=bool(label), category=r.category,
            ))  # fmt: skip
    single = results[0].preferred() if len(results) == 1 else None
    model, weights, random_weights = identity(detector)
    info = {"dataset": opts.dataset, "root": str(opts.root), "model": model,
            "pretrained": weights, "random_weights": random_weights,
            "seed": detector.seed, "mode": opts.mode, "refs": opts.refs,
            "tta": tta_kind(opts.tta), "setting class": setting_class(opts),
            "false_reject": opts.false_reject}  # fmt: skip
    title = f"anoclip evaluate: {opts.dataset} ({', '.join(r.category for r in results)})"
    title += " (RANDOM weights: scores meaningless)" if random_weights else ""
    return write_report(
        out, rows, None if single is None else single.threshold, info, title,
        metrics=report_table(results),
        scale=FIXED_SCALE if single is None else calibrated_scale(single.threshold),
    )  # fmt: skip
