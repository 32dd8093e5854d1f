"""`anoclip evaluate`: metrics on a labelled test set (MVTec AD, VisA, a folder), resumable
per category (:mod:`anoclip.evaluation.protocol`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from anoclip.cli.arguments import add_mode_args, add_model_args, add_visual_args, false_reject_arg
from anoclip.cli.plan import Plan
from anoclip.errors import UsageError
from anoclip.settings import preset


def add_evaluate_command(sub: Any) -> None:
    """The `evaluate` subcommand and its options."""
    ev = sub.add_parser("evaluate", help="metrics on a labelled test set (MVTec AD, VisA, folder)")
    ev.add_argument("--dataset", required=True, choices=("mvtec", "visa", "folder"))
    ev.add_argument("--root", required=True, help="dataset root folder")
    ev.add_argument("--categories", nargs="+", default=None, help="default: all found")
    ev.add_argument("--out", required=True, help="output folder (resumes finished categories)")
    add_model_args(ev)
    add_mode_args(ev)
    ev.add_argument(
        "--preset",
        choices=("paper",),
        default=None,
        help="the papers' protocol: MVTec seed 111; VisA seed 42, two tiles, CLS score, "
        "linear adapter (overrides --seed and the matching settings)",
    )
    ev.add_argument("--eval-size", type=int, default=None, help="metric resolution (shorter side)")
    ev.add_argument("--ap-mode", choices=("step", "trapezoid"), default="step")
    ev.add_argument("--no-strict", action="store_true", help="allow incomplete MVTec categories")
    ev.add_argument("--limit", type=int, default=None, help="images per category (smoke tests)")
    ev.add_argument(
        "--false-reject",
        default=None,
        metavar="RATE",
        help="target false-reject rate of the thresholds calibrated on each category's "
        "train/good images, in (0, 1) (default 0.01)",
    )
    add_visual_args(ev, evaluate=True)
    ev.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    plan = Plan(args, preset(args.preset, args.dataset) if args.preset else None)
    false_reject = false_reject_arg(args.false_reject)
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such folder")

    from anoclip.evaluation.protocol import EvalOptions, evaluate  # the stack loads from here on

    det = plan.detector(args)
    opts = EvalOptions(
        dataset=args.dataset, root=args.root, categories=args.categories, tta=plan.tta,
        mode=args.mode, refs=plan.refs, eval_size=args.eval_size, ap_mode=args.ap_mode,
        strict=not args.no_strict, limit=args.limit, false_reject=false_reject,
        train_bank=args.train_bank,
    )  # fmt: skip
    started = time.perf_counter()
    results = evaluate(det, opts, args.out, log=lambda m: print(f"anoclip: {m}", file=sys.stderr))
    print((Path(args.out) / "metrics.md").read_text())
    print(
        f"anoclip: evaluated {len(results)} categories in {time.perf_counter() - started:.0f} s;"
        f" tables and report.html in {args.out}",
        file=sys.stderr,
    )
    return 0
