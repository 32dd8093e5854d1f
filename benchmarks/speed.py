"""Speed and memory: anoclip's batched pipeline vs a naive per-image loop that mirrors the
reference code (one image at a time, all 22 views through the V-V encoder, the 924 prompt
sentences encoded for every image, a fresh nn.Linear adapter and torch AdamW for 5 TTA
steps). Both run at equal settings and give equal maps (checked below and in the tests).

    python benchmarks/speed.py                       # tiny and ViT-B-16-plus-240, random weights
    python benchmarks/speed.py --models tiny --images 32

Each (model, pipeline) runs in its own process, so peak RSS is its own. Times are medians of
per-image times (ours: batch time / batch size), text embeddings excluded for ours (cached,
a one-off per object, reported separately). The FLOP floor is the ViT forward FLOPs per
image (counted with torch's FlopCounterMode) over this machine's peak measured matmul rate.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MODELS = {"tiny": str(SHARED / "models" / "tiny-clip-12l.json"), "vitb16plus": "ViT-B-16-plus-240"}
IMAGES = str(SHARED / "data" / "mvtec_ad" / "screw" / "test" / "*" / "*.png")


# ----------------------------------------------------------------------------- naive loop


def naive_predict(backbone, path: str, object_name: str, seed: int = 0):
    """One image, the reference way. Returns (score, map at the image's size)."""
    from anoclip.loading import Preparer
    from anoclip.encoder import VVEncoder
    from anoclip.preprocess import resize_map
    from anoclip.prompts import sentences
    from anoclip.scoring import patch_map, probs_from_cosines, text_cosines
    from anoclip.settings import Settings
    from anoclip.tta import draw_noise, init_adapter
    from anoclip.views import augmented_views

    settings = Settings()
    sample = Preparer(backbone.image_size, backbone.mean, backbone.std).prepare(path)

    def anomaly_prob(emb, feats, tau):
        return probs_from_cosines(text_cosines(emb, feats), tau)

    model = backbone.model
    # text, encoded again for every image
    with torch.no_grad():
        feats, rows = [], []
        for state in sentences(object_name, False):
            emb = model.encode_text(backbone.tokenizer(state))
            mean = emb.mean(0)
            feats.append(mean / mean.norm())
            rows.append(emb / emb.norm(dim=-1, keepdim=True))
        text, bank = torch.stack(feats, dim=1), torch.cat(rows)
    encoder = VVEncoder(model.visual)
    with torch.no_grad():
        views = augmented_views(sample.tiles)[0]  # 22 views, all through the V-V encoder
        score = anomaly_prob(encoder(views).cls, text, 1.0).mean().item()
        tokens = encoder(sample.tiles).vv[12][0]  # [L, C]
    # TTA: a fresh adapter and optimizer for this image
    gen = torch.Generator().manual_seed(seed)
    w0, b0 = init_adapter(bank.shape[0], tokens.shape[1], gen)
    noise = draw_noise(tuple(tokens.shape), 5, settings, gen)[:, 0]
    layer = torch.nn.Linear(tokens.shape[1], bank.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w0)
        layer.bias.copy_(b0)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)

    def adapter(x):
        return 0.5 * x + 0.5 * torch.tanh(layer(x / x.norm(dim=-1, keepdim=True))) @ bank

    for step in range(5):
        x = torch.stack([tokens, tokens + noise[step]])
        y = adapter(x)
        pred = torch.softmax((y / y.norm(dim=-1, keepdim=True)) @ text, dim=-1)
        soft = (-pred[0] * pred[0].log()).sum(-1).mean()
        hard = (-pred[1, :, 1].log() - pred[0, :, 0].log()).mean()
        loss = soft + 0.5 * hard
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        probs = anomaly_prob(adapter(tokens)[None], text, 1.0)
        grid = patch_map(probs, tuple(encoder.grid), (240, 240))[0]
    return score, resize_map(grid, sample.size).clamp(0, 1).numpy()


# ----------------------------------------------------------------------------- workers


def _load(model_key: str):
    from anoclip import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(MODELS[model_key], "none", device="cpu")


def run_naive(model_key: str, paths: list[str], keep: int) -> dict:
    backbone = _load(model_key)
    naive_predict(backbone, paths[0], "screw")  # warm-up
    times, maps = [], []
    for path in paths:
        start = time.perf_counter()
        _, amap = naive_predict(backbone, path, "screw")
        times.append(time.perf_counter() - start)
        if len(maps) < keep:
            maps.append(amap)
    return {"times": times, "maps": maps}


def run_ours(model_key: str, paths: list[str], keep: int, batch_size: int) -> dict:
    from anoclip import Detector

    det = Detector(backbone=_load(model_key), batch_size=batch_size)
    start = time.perf_counter()
    det.text_bank("screw")
    text_s = time.perf_counter() - start
    det.predict(paths[:batch_size], "screw")  # warm-up
    times, maps = [], []
    for k in range(0, len(paths), batch_size):
        chunk = paths[k : k + batch_size]
        start = time.perf_counter()
        preds = det.predict(chunk, "screw")
        times += [(time.perf_counter() - start) / len(chunk)] * len(chunk)
        maps += [p.anomaly_map for p in preds][: max(0, keep - len(maps))]
    return {"times": times, "maps": maps, "text_s": text_s}


def _worker(kind: str, model_key: str, paths: list[str], keep: int, batch: int, out: str):
    torch.manual_seed(0)
    res = (
        run_naive(model_key, paths, keep)
        if kind == "naive"
        else run_ours(model_key, paths, keep, batch)
    )
    res["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.savez(out, *res.pop("maps"))
    Path(out + ".json").write_text(json.dumps(res))


def measure(kind, model_key, paths, keep, batch, tmp) -> tuple[dict, list[np.ndarray]]:
    out = str(Path(tmp) / f"{kind}-{model_key}.npz")
    proc = mp.get_context("spawn").Process(
        target=_worker, args=(kind, model_key, paths, keep, batch, out)
    )
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{kind}/{model_key} worker failed ({proc.exitcode})")
    res = json.loads(Path(out + ".json").read_text())
    with np.load(out) as z:
        maps = [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]
    return res, maps


# ----------------------------------------------------------------------------- FLOP floor


def matmul_rate(n: int = 2048, repeats: int = 10) -> float:
    """Peak float32 matmul FLOP/s: the best of `repeats` (this shared machine's throughput
    varies by up to 2x between runs, so the floor uses the best rate seen)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        rates.append(2 * n**3 / (time.perf_counter() - start))
    return max(rates)


def vit_flops(model_key: str) -> tuple[float, float]:
    """(ours, naive) forward FLOPs per image: 1 V-V + 21 plain passes vs 23 V-V passes."""
    from torch.utils.flop_counter import FlopCounterMode

    from anoclip.encoder import VVEncoder

    backbone = _load(model_key)
    x = torch.randn(1, 3, backbone.image_size, backbone.image_size)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel is not counted
    try:
        with torch.inference_mode():
            with FlopCounterMode(display=False) as vv:
                VVEncoder(backbone.model.visual)(x)
            with FlopCounterMode(display=False) as plain:
                backbone.model.visual(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    f_vv, f_plain = vv.get_total_flops(), plain.get_total_flops()
    return f_vv + 21 * f_plain, 23 * f_vv


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "vitb16plus"], choices=list(MODELS))
    p.add_argument("--images", type=int, default=32, help="images for our pipeline")
    p.add_argument(
        "--naive-images",
        type=int,
        default=None,
        help="images for the naive loop (default: all for tiny, 4 for ViT-B: 90 s each)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--check", type=int, default=2, help="images whose maps are compared")
    args = p.parse_args(argv)
    paths = sorted(glob.glob(IMAGES))[: args.images]
    if len(paths) < args.images:
        print(f"need {args.images} images under {IMAGES}", file=sys.stderr)
        return 2
    rate = matmul_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
          f"measured matmul rate {rate / 1e9:.0f} GFLOP/s")  # fmt: skip
    header = (
        f"{'model':12s} {'pipeline':8s} {'images':>6s} {'median s/img':>13s} {'peak RSS MB':>12s}"
        f" {'FLOP floor s':>13s} {'ratio':>7s}"
    )
    print(header)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            n_naive = args.naive_images or (len(paths) if key == "tiny" else 4)
            check = min(args.check, n_naive)
            naive, naive_maps = measure("naive", key, paths[:n_naive], check, 1, tmp)
            ours, our_maps = measure("ours", key, paths, check, args.batch_size, tmp)
            f_ours, f_naive = vit_flops(key)
            t_naive = statistics.median(naive["times"])
            t_ours = statistics.median(ours["times"])
            diff = max(float(np.abs(a - b).max()) for a, b in zip(naive_maps, our_maps))
            print(f"{key:12s} {'naive':8s} {n_naive:6d} {t_naive:13.3f} {naive['rss_mb']:12.0f}"
                  f" {f_naive / rate:13.3f} {'':>7s}")  # fmt: skip
            print(f"{key:12s} {'anoclip':8s} {len(paths):6d} {t_ours:13.3f} {ours['rss_mb']:12.0f}"
                  f" {f_ours / rate:13.3f} {t_naive / t_ours:6.1f}x")  # fmt: skip
            print(f"{'':12s} text embeddings (ours, once per object): {ours['text_s']:.1f} s; "
                  f"max |map naive - ours| over {check} images: {diff:.1e}; ViT FLOPs/img "
                  f"{f_ours / 1e9:.0f} G (ours) vs {f_naive / 1e9:.0f} G (naive)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
