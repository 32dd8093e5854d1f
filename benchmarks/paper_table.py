"""Reproduce the papers' MVTec AD / VisA table with anoclip and print it beside METHOD.md's
reference numbers.

Runs unchanged wherever the weights and data exist, e.g.

    python benchmarks/paper_table.py --mvtec-root data/mvtec_ad --visa-root data/visa \\
        --pretrained /path/to/vit_b_16_plus_240-laion400m_e32-699c4b84.pt --out runs/paper

Protocol (METHOD.md §1, §2, §6): ViT-B-16-plus-240 @240; MVTec: 22-view CLS score,
text adapter, seed 111; VisA: two tiles, CLS score, linear adapter, seed 42; metrics per
category at the model input resolution, then the unweighted mean. Finished categories are
reused, so an interrupted run resumes. Here (no weights) the tests exercise this code path
with the tiny random model on ../shared/data/mvtec_ad.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

from anoclip import Detector, Runtime, Settings
from anoclip.evaluation.metrics import NAMES
from anoclip.evaluation.protocol import EvalOptions, evaluate, mean_row
from anoclip.evaluation.published import means_for
from anoclip.settings import DEFAULT_MODEL, DEFAULT_PRETRAINED
from anoclip.settings import preset as protocol_preset


def run_dataset(name: str, root: str, args: argparse.Namespace) -> list:
    preset = protocol_preset("paper", name)
    settings = dataclasses.replace(Settings(), **preset["settings"])
    runtime = Runtime(batch_size=args.batch_size, device=args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        det = Detector(args.model, args.pretrained, seed=preset["seed"], settings=settings,
                       runtime=runtime)  # fmt: skip
    opts = EvalOptions(
        dataset=name, root=root, categories=args.categories, limit=args.limit,
        strict=args.limit is None and not args.categories,
    )  # fmt: skip
    out = Path(args.out) / name
    return evaluate(
        det, opts, out, progress=not args.quiet, log=lambda m: print(m, file=sys.stderr)
    )


def table(name: str, results: list) -> str:
    labels = ("I-AUROC", "I-AP", "I-F1", "P-AUROC", "P-AP", "P-F1", "PRO")
    lines = [f"\n{name.upper()}  (%, category mean over {len(results)} categories)"]
    lines.append(f"{'':42s}" + "".join(f"{x:>9s}" for x in labels))
    for r in results:
        vals = r.metrics.as_dict()
        lines.append(f"  {r.category:40s}" + "".join(f"{100 * vals[k]:9.1f}" for k in NAMES))
    mean = mean_row(results)
    lines.append(f"{'anoclip (ours) mean':42s}" + "".join(f"{100 * mean[k]:9.1f}" for k in NAMES))
    for ref in means_for(name):
        label = f"{ref.method} [{ref.setting}, {ref.backbone}] ({ref.source})"
        cells = "".join(f"{ref.values[k]:9.1f}" if k in ref.values else f"{'-':>9s}" for k in NAMES)
        lines.append(f"{label[:42]:42s}" + cells)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mvtec-root", default=None)
    p.add_argument("--visa-root", default=None)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--pretrained", default=DEFAULT_PRETRAINED)
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--categories", nargs="+", default=None, help="subset (rows, not means)")
    p.add_argument("--limit", type=int, default=None, help="images per category (smoke test)")
    p.add_argument("--out", default="runs/paper_table")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if not args.mvtec_root and not args.visa_root:
        p.error("give --mvtec-root and/or --visa-root")
    started = time.perf_counter()
    for name, root in (("mvtec", args.mvtec_root), ("visa", args.visa_root)):
        if root:
            print(table(name, run_dataset(name, root, args)))
    print(
        f"\n({time.perf_counter() - started:.0f} s; per-category tables in {args.out}/*/metrics.md)"
    )
    if args.pretrained.lower() in ("none", "random", ""):
        print("Random weights: these numbers say nothing about detection quality.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
