"""Benchmark: small flaws at their own scale (issue 25, item 2).

A 10 px flaw in a 256 px image and a 20 px flaw in a 1024 px image (the same field of view
photographed at 4x the resolution: benchmarks/textures.py scales the texture with the image)
must give a peak that outscores every good image's maximum. Rows: the visual input side
(`visual_size`: 0 = the backbone's own, 224 for tf_efficientnet_lite0; 448) and the patch
radii (the default {1, 3, 5}, or 1 alone), each image scored alone against a bank of 4
known-good images of the same size (`--mode anoclip --normal`, the new defaults otherwise).

Columns: "found" = share of flawed images whose score exceeds the highest good score;
"at its place" = share whose map maximum lies within one flaw size of the flaw; image
AUROC; seconds per image. Families woven and grain (seed 0), kinds speck and hole.

Run: .venv/bin/python benchmarks/flaw_scale.py [--good 12] [--flawed 6]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from anoclip import Detector
from anoclip.evaluation import metrics

HERE = Path(__file__).resolve().parent
CASES = ((256, 10), (1024, 20))
ROWS = (("224 (default), r 1-3-5", 0, (1, 3, 5)), ("224, r 1", 0, (1,)),
        ("448, r 1-3-5", 448, (1, 3, 5)))  # fmt: skip


def textures():
    spec = importlib.util.spec_from_file_location("textures", HERE / "textures.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("textures", mod)
    spec.loader.exec_module(mod)
    return mod


def images(tx, family: str, size: int, flaw: int, n_good: int, n_flawed: int):
    """(bank, good, flawed, masks) drawn from seeded streams."""
    rng = np.random.default_rng([0, size, len(family)])
    bank = [tx.good_image(family, size, rng) for _ in range(4)]
    good = [tx.good_image(family, size, rng) for _ in range(n_good)]
    flawed, masks = [], []
    for i in range(n_flawed):
        img, m = tx.local_flaw(tx.good_image(family, size, rng), ("speck", "hole")[i % 2], rng,
                               size_px=flaw)  # fmt: skip
        flawed.append(img)
        masks.append(m > 0)
    return bank, good, flawed, masks


def placed(m: np.ndarray, mask: np.ndarray, flaw: int) -> bool:
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    y, x = y * mask.shape[0] // m.shape[0], x * mask.shape[1] // m.shape[1]
    ys, xs = np.nonzero(mask)
    return bool(ys.min() - flaw <= y <= ys.max() + flaw and xs.min() - flaw <= x <= xs.max() + flaw)


def row(tx, family, size, flaw, visual_size, radii, args) -> dict:
    det = Detector(device="cpu", visual_backbone="timm:tf_efficientnet_lite0", fusion="visual",
                   visual_size=visual_size, patch_radii=radii)  # fmt: skip
    bank, good, flawed, masks = images(tx, family, size, flaw, args.good, args.flawed)
    start = time.perf_counter()
    b = det.build_bank(bank, family)
    pg = det.predict(good, family, bank=b)
    pf = det.predict(flawed, family, bank=b)
    took = (time.perf_counter() - start) / (len(good) + len(flawed))
    top = max(p.score for p in pg)
    scores = np.array([p.score for p in pg + pf])
    labels = np.r_[np.zeros(len(pg)), np.ones(len(pf))]
    return {"found": np.mean([p.score > top for p in pf]),
            "place": np.mean([placed(p.anomaly_map, m, flaw) for p, m in zip(pf, masks)]),
            "auroc": metrics.auroc(labels, scores), "s": took}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--good", type=int, default=12)
    p.add_argument("--flawed", type=int, default=6)
    p.add_argument("--families", nargs="+", default=["woven", "grain"])
    args = p.parse_args()
    warnings.simplefilter("ignore")
    tx = textures()
    print(f"CPU: {platform.processor() or platform.machine()}")
    print("| family | image / flaw | visual input, radii | found | at its place | AUROC | s/img |")
    print("|---|---|---|---|---|---|---|")
    for family in args.families:
        for size, flaw in CASES:
            for name, vs, radii in ROWS:
                r = row(tx, family, size, flaw, vs, radii, args)
                print(
                    f"| {family} | {size} px / {flaw} px | {name} | {r['found']:.0%} | "
                    f"{r['place']:.0%} | {r['auroc']:.3f} | {r['s']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
