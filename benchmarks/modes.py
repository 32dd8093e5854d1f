"""Time and peak memory of the scoring modes (anoclip, dual, mutual).

    python benchmarks/modes.py                 # both parts below
    python benchmarks/modes.py --part tokens   # only the synthetic-token part

Part "pipeline": the whole pipeline (tiny model, random weights, 22-view score, TTA) on the
160 screw test images of ../shared/data, one mode per process.

Part "tokens": the visual-reference branch alone on synthetic L2-normalised tokens with
C = 640 (ViT-B-16-plus-240's width) at a 15×15 and a 37×37 grid: references, nearest-
neighbour distances and aggregation. Random tokens are fine here: the cost does not depend
on their values. Tokens of sets above 2 GB (float32) are stored in float16, as the pipeline
does. Mutual scoring over all images is O(N²·L²·C); its time for N = 1000 is projected from
the measured throughput rather than run.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing as mp
import resource
import sys
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SCREWS = str(SHARED / "data" / "mvtec_ad" / "screw" / "test" / "*" / "*.png")
TINY = str(SHARED / "models" / "tiny-clip-12l.json")
FLOAT16_ABOVE_BYTES = 2 * 2**30


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pipeline_worker(mode: str, tta: str, out: str) -> None:
    from anoclip import Detector, load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone(TINY, "none", device="cpu")
    det = Detector(backbone=backbone)
    det.text_bank("screw")
    paths = sorted(glob.glob(SCREWS))
    start = time.perf_counter()
    det.predict(paths, "screw", tta=tta, mode=mode)
    seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"n": len(paths), "s": seconds, "rss": _rss_mb()}))


def tokens_worker(n: int, side: int, refs: str, out: str) -> None:
    from anoclip.references.distances import nn_distances, reference_sets

    length, dim = side * side, 640
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16 if n * length * dim * 4 > FLOAT16_ABOVE_BYTES else torch.float32
    tokens = torch.empty(n, length, dim, dtype=dtype)
    for k in range(0, n, 64):  # built in chunks, as the pipeline stores them batch by batch
        part = torch.randn(min(64, n - k), length, dim, generator=gen)
        tokens[k : k + 64] = (part / part.norm(dim=-1, keepdim=True)).to(dtype)
    cls = torch.randn(n, dim, generator=gen)
    num_refs = refs if refs == "all" else int(refs)
    start = time.perf_counter()
    ref_sets = reference_sets(cls, torch.arange(n), num_refs)
    nn_distances(tokens, ref_sets, "interval_mean")
    seconds = time.perf_counter() - start
    pairs = sum(len(r) for r in ref_sets)
    Path(out).write_text(
        json.dumps({"s": seconds, "rss": _rss_mb(), "pairs": pairs, "dtype": str(dtype)[6:]})
    )


def run(target, *args) -> dict:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "r.json")
        proc = mp.get_context("spawn").Process(target=target, args=(*args, out))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"{target.__name__}{args} failed ({proc.exitcode})")
        return json.loads(Path(out).read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=("pipeline", "tokens", "both"), default="both")
    p.add_argument("--n", type=int, default=160, help="images in the synthetic-token part")
    p.add_argument("--big-n", type=int, default=1000, help="the large set (dual and k=5 only)")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    if args.part in ("pipeline", "both"):
        print("\nwhole pipeline: tiny model, 160 screw images, 22-view score")
        print(f"{'mode':10s} {'tta':6s} {'total s':>8s} {'s/img':>7s} {'peak RSS MB':>12s}")
        for mode, tta in (("anoclip", "noise"), ("dual", "noise"), ("mutual", "noise"),
                          ("dual", "synth")):  # fmt: skip
            r = run(pipeline_worker, mode, tta)
            print(f"{mode:10s} {tta:6s} {r['s']:8.1f} {r['s'] / r['n']:7.3f} {r['rss']:12.0f}")
    if args.part in ("tokens", "both"):
        print("\nvisual-reference branch on synthetic tokens, C = 640")
        print(f"{'N':>5s} {'grid':>6s} {'refs':>5s} {'pairs':>7s} {'dtype':>8s} {'seconds':>8s}"
              f" {'ms/pair':>8s} {'peak RSS MB':>12s}")  # fmt: skip
        cases = [(args.n, side, refs) for side in (15, 37) for refs in ("1", "5", "all")]
        cases += [(args.big_n, side, refs) for side in (15, 37) for refs in ("1", "5")]
        per_pair = {}
        for n, side, refs in cases:
            r = run(tokens_worker, n, side, refs)
            per_pair[side] = r["s"] / r["pairs"]
            print(f"{n:5d} {side:3d}x{side:<2d} {refs:>5s} {r['pairs']:7d} {r['dtype']:>8s}"
                  f" {r['s']:8.1f} {1e3 * r['s'] / r['pairs']:8.2f} {r['rss']:12.0f}")  # fmt: skip
        for side, t in per_pair.items():
            pairs = args.big_n * (args.big_n - 1)
            hours = pairs * t / 3600
            print(f"projected: mutual over all {args.big_n} images at {side}x{side}: "
                  f"{pairs} pairs x {1e3 * t:.2f} ms = {hours:.1f} h on this CPU")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
