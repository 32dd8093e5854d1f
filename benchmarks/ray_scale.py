"""Throughput: one process vs the Ray runner on this machine, and a projection to G GPUs.

    python benchmarks/ray_scale.py                        # ViT-B-16-plus-240, random weights
    python benchmarks/ray_scale.py --model tiny --images 16

Same images, same outputs (scores.csv + maps/*.npy, no overlays), no TTA unless --tta:

    single:  Detector.iter_predict -> ResultWriter (what `anoclip detect` does)
    ray A:   run_ray with A actors on a local `ray.init(num_cpus=2)` (2/A CPUs per actor)

Ray times are end to end (actor start, model load and text embeddings in every actor
included) and steady state: the median per-image wall time measured inside each actor,
divided by the number of actors working side by side.
On 2 cores Ray cannot beat one process that already uses both cores: expect ≤ 1×.

Projection: per-image CPU costs that stay on the CPU on a GPU node (decode + resize +
normalise; map resize + .npy bytes) are measured here; the GPU forward is estimated from
the counted FLOPs at an assumed sustained rate (--gpu-tflops), not measured.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = {"tiny": str(SHARED / "models" / "tiny-clip-12l.json"), "vitb16plus": "ViT-B-16-plus-240"}
IMAGES = str(SHARED / "data" / "mvtec_ad" / "screw" / "test" / "*" / "*.png")
OBJECT = "screw"


def kwargs_for(model_key: str, views: int) -> dict:
    score = "cls" if views == 1 else "cls_aug22"
    return {"model": MODELS[model_key], "pretrained": "none", "device": "cpu",
            "text_tokens": "trimmed", "image_score": score}  # fmt: skip


def single_process(paths: list[str], kw: dict, tta: bool, out: Path) -> dict:
    """`anoclip detect`'s path: iter_predict -> ResultWriter; model/text load apart."""
    from anoclip import Detector
    from anoclip.data.listing import output_names
    from anoclip.results.writer import ResultWriter

    torch.set_num_threads(2)
    start = time.perf_counter()
    det = Detector(**kw)
    det.text_bank(OBJECT)
    load_s = time.perf_counter() - start
    det.predict(paths[:2], OBJECT, tta)  # warm-up
    names = dict(zip(paths, output_names([Path(p) for p in paths])))
    start = time.perf_counter()
    with ResultWriter(out, overlays=False) as writer:
        for pred in det.iter_predict(paths, OBJECT, tta):
            writer.add(pred, names[pred.source], pred.source)
    return {"load_s": load_s, "run_s": time.perf_counter() - start, "detector": det}


def cpu_side_costs(det, paths: list[str]) -> dict:
    """Median seconds per image of the work that stays on CPUs on a GPU node."""
    from anoclip.data.preprocess import resize_map

    prep, post = [], []
    for p in paths:
        start = time.perf_counter()
        smp = det.prepare(p)
        prep.append(time.perf_counter() - start)
        m = torch.rand(240, 240)
        start = time.perf_counter()
        amap = resize_map(m, smp.size).clamp(0, 1).numpy().astype(np.float32)
        np.save(io.BytesIO(), amap)
        post.append(time.perf_counter() - start)
    return {"prep_s": statistics.median(prep), "post_s": statistics.median(post),
            "map_mb": amap.nbytes / 2**20}  # fmt: skip


def forward_flops(det, views: int) -> float:
    """FLOPs of one image through the exported scorer (V-V encoder + views)."""
    from torch.utils.flop_counter import FlopCounterMode

    from anoclip.deploy.convert import scorer_for

    module = scorer_for(det, OBJECT, views)
    x = torch.randn(1, 3, det.backbone.image_size, det.backbone.image_size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(x)
    return float(counter.get_total_flops())


def ray_runs(paths: list[str], kw: dict, tta: bool, actors: int, root: Path) -> dict:
    """End-to-end time of run_ray, and the steady per-image cost measured inside the
    actors (median of each batch's wall time per image, first batch of each actor
    included; actor start excluded)."""
    from anoclip.deploy.ray_cluster import run_ray

    per_image: list[float] = []
    first: list[float] = []
    start = time.perf_counter()

    def committed(batch: dict) -> None:
        first.append(time.perf_counter() - start)
        per_image.extend(float(s) for s in batch["seconds"])

    run_ray(paths, OBJECT, root / f"ray{actors}", kw, tta=tta, num_actors=actors,
            cpus_per_actor=2 / actors, batch_size=4, on_batch=committed)  # fmt: skip
    total = time.perf_counter() - start
    steady = statistics.median(per_image) / actors  # A actors work side by side
    return {"actors": actors, "tn": total, "first": first[0], "steady": steady}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vitb16plus", choices=list(MODELS))
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--views", type=int, default=1, choices=(1, 22))
    parser.add_argument("--tta", action="store_true", help="AnoCLIP's noise TTA (default off)")
    parser.add_argument("--gpu-tflops", type=float, default=50.0,
                        help="assumed sustained GPU rate for the projection (TFLOP/s)")  # fmt: skip
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8, 64])
    args = parser.parse_args(argv)
    import ray

    warnings.simplefilter("ignore")
    paths = sorted(glob.glob(IMAGES))
    paths = paths[:: max(1, len(paths) // args.images)][: args.images]
    kw = kwargs_for(args.model, args.views)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        single = single_process(paths, kw, args.tta, root / "single")
        det = single.pop("detector")
        costs = cpu_side_costs(det, paths[:8])
        flops = forward_flops(det, args.views)
        del det
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            runs = [ray_runs(paths, kw, args.tta, a, root) for a in (1, 2)]
        finally:
            ray.shutdown()
    load1 = os.getloadavg()[0]
    n = len(paths)
    per_single = single["run_s"] / n
    lines = [
        f"### {MODELS[args.model]} (random weights), views={args.views}, tta={args.tta}, "
        f"{n} screw images (1024²), 2 cores, load avg {load0:.1f}→{load1:.1f}",
        "",
        "| runner | wall s (N images) | img/s | steady s/img (actor) | img/s steady | vs single |",
        "|---|---|---|---|---|---|",
        f"| single process (2 threads) | {single['run_s']:.1f} | {n / single['run_s']:.2f} "
        f"| {per_single:.3f} | {1 / per_single:.2f} | 1.00 |",
    ]
    for r in runs:
        lines.append(
            f"| Ray, {r['actors']} actor(s) × {2 // r['actors']} CPU | {r['tn']:.1f} "
            f"| {n / r['tn']:.2f} | {r['steady']:.3f} | {1 / r['steady']:.2f} "
            f"| {per_single / r['steady']:.2f} |"
        )
    lines += [
        "",
        f"single-process model + text load: {single['load_s']:.1f} s (paid again by every "
        f"Ray actor); Ray start to first committed batch: "
        + ", ".join(f"{r['actors']} actor(s) {r['first']:.1f} s" for r in runs),
        f"CPU-side per image: decode + preprocess {1000 * costs['prep_s']:.0f} ms, map resize"
        f" + .npy {1000 * costs['post_s']:.0f} ms ({costs['map_mb']:.1f} MiB map); forward "
        f"{flops / 1e9:.1f} GFLOP/image",
        "",
        projection(flops, costs, per_single, args.gpu_tflops, args.gpus),
    ]
    print("\n".join(lines))
    return 0


def projection(flops: float, costs: dict, per_single: float, tflops: float, gpus: list) -> str:
    """Throughput of G GPU actors: each is bounded by its GPU forward (estimated) and by
    the CPU work that feeds it (measured here, per core)."""
    t_gpu = flops / (tflops * 1e12)
    cpu = costs["prep_s"] + costs["post_s"]
    rows = [
        "| GPUs G | CPU cores/GPU | img/s (GPU-bound) | img/s (CPU-bound) | img/s | maps MB/s |",
        "|---|---|---|---|---|---|",
    ]
    for g in gpus:
        for cores in (4, 8):
            gpu_rate, cpu_rate = g / t_gpu, g * cores / cpu
            rate = min(gpu_rate, cpu_rate)
            rows.append(f"| {g} | {cores} | {gpu_rate:.0f} | {cpu_rate:.0f} | {rate:.0f} "
                        f"| {rate * costs['map_mb']:.0f} |")  # fmt: skip
    return "\n".join([
        f"Projection (estimate): GPU forward ≈ {1000 * t_gpu:.2f} ms/image at an assumed "
        f"{tflops:.0f} TFLOP/s sustained; CPU-side work {1000 * cpu:.0f} ms/image/core "
        f"measured here; this machine: {per_single:.3f} s/image on 2 cores.",
        "",
        *rows,
        "",
        "Actor start (model + text embeddings) is paid once per actor; the driver writes one "
        "CSV row per image; maps go to shared storage at the rate in the last column "
        "(--max-map-side lowers it).",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
