"""`anoclip detect`: score images, write anomaly maps, decide ok / defect, report.

    validate (Plan, inputs, --engine / --ray, decisions, --out) -> load the model stack
    -> bank -> calibrate (--normal) -> score into --out (ResultWriter) -> decide -> report

Everything is validated before torch loads; the --out folder is made only when scoring
starts (:mod:`anoclip.cli.run_folder`). Local PyTorch, an exported file
(:mod:`anoclip.cli.on_engine`) or a Ray cluster (:mod:`anoclip.cli.on_ray`) score.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anoclip.cli.arguments import (
    add_decision_args,
    add_mode_args,
    add_model_args,
    add_visual_args,
    check_object,
    tta_arg,
)
from anoclip.cli.messages import warn
from anoclip.cli.on_engine import (
    EnginePlan,
    add_engine_args,
    engine_plan,
    engine_run_info,
    load_engine,
)
from anoclip.cli.on_ray import RayPlan, add_ray_args, detect_on_ray, ray_plan
from anoclip.cli.plan import Plan, model_identity
from anoclip.cli.run_folder import check_output_folder, run_header
from anoclip.cli.verdicts import (
    calibrate_on_normals,
    doubts,
    plan_decisions,
    print_done,
    resumed_decisions,
    threshold_id,
    write_detect_report,
)
from anoclip.data.listing import expand_inputs, output_names
from anoclip.errors import UsageError
from anoclip.settings import fingerprint

MAP_SIDE = 512  # default longest side of written maps (--max-map-side)


def add_detect_command(sub: Any) -> None:
    """The `detect` subcommand and its options."""
    det = sub.add_parser("detect", help="score images and write anomaly maps")
    det.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    det.add_argument("--object", required=True, help="object name, e.g. screw or metal_nut")
    det.add_argument("--out", required=True, help="output folder")
    add_model_args(det)
    add_mode_args(det)
    det.add_argument("--resume", action="store_true", help="skip images already in scores.csv")
    det.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier run in --out"
    )
    det.add_argument("--no-overlay", action="store_true", help="write .npy maps only")
    det.add_argument(
        "--max-map-side",
        type=int,
        default=None,
        help=f"longest side of the written maps and overlays in pixels (default {MAP_SIDE}; "
        "0: the image's size)",
    )
    det.add_argument(
        "--full-maps",
        action="store_true",
        help="keep maps/NAME.npy in float32 at the image's size (default: float16, at most "
        f"{MAP_SIDE} px: under 1 MB per image with its overlay)",
    )
    add_decision_args(det)
    add_visual_args(det)
    add_engine_args(det)
    add_ray_args(det)
    det.set_defaults(func=run_detect, tta=None)  # None: not given (--engine refuses a given one)


def run_detect(args: argparse.Namespace) -> int:
    plan = Plan(args)
    paths = detect_inputs(args)
    engine = engine_plan(args, plan.settings, plan.runtime)
    ray = ray_plan(args)
    if (engine is not None or ray is not None) and (plan.settings.patch_scorer or plan.bank.used):
        raise UsageError(
            f"{'--engine' if engine is not None else '--ray'} runs the CLIP text branch and "
            "token references only: drop --visual-backbone, fusion=visual and banks"
        )
    if engine is not None:
        plan.tta = "none"
    finger = detect_fingerprint(args, plan, engine, ray)
    thr_id = threshold_id(finger)
    decisions = plan_decisions(args, thr_id, plan.normals_as_bank)
    out = Path(args.out)
    check_output_folder(out, args.resume, args.overwrite, finger)
    decisions = resumed_decisions(decisions, out, args.resume, thr_id)
    if ray is not None:
        return detect_on_ray(args, plan, ray, paths, finger, decisions)

    from anoclip.results.writer import ResultWriter  # the stack loads from here on

    det = load_engine(engine, plan) if engine else plan.detector(args)
    bank = plan.bank.load(det, args.object)
    threshold = decisions.threshold
    if decisions.normals:
        threshold = calibrate_on_normals(det, decisions, args, plan, thr_id, bank)
    started = time.perf_counter()
    base = engine_run_info(args, engine, det, finger) if engine else run_info(args, det, finger)
    info = {**base, "decisions": decisions.describe()}
    with ResultWriter(out, resume=args.resume, overwrite=args.overwrite,
                      overlays=not args.no_overlay, threshold=threshold,
                      map_dtype="float32" if args.full_maps else "float16") as writer:  # fmt: skip
        writer.write_run_info(info)
        count, skipped, modes, noted = score_all(writer, det, args, plan, paths, bank)
        errors = writer.num_errors
        if modes or noted:
            extra = {"modes_used": sorted(modes)} if modes else {}
            writer.write_run_info({**info, **extra, **doubts(noted, count)})
    elapsed = time.perf_counter() - started
    final, rows = writer.finalize(thr_id, progress=True)
    page = write_detect_report(out, rows, final, info, args, noted)
    print_done(
        out, (count, skipped, errors), elapsed, rows, final, page, banked=plan.normals_as_bank
    )
    return 1 if errors else 0


def detect_inputs(args: argparse.Namespace) -> list[Path]:
    """The validated images of `anoclip detect` (and its other plain options)."""
    check_object(args.object)
    if args.max_map_side is None:
        args.max_map_side = 0 if args.full_maps else MAP_SIDE
    if args.max_map_side < 0:
        raise UsageError("--max-map-side must be >= 0")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    paths = expand_inputs(args.inputs, out=args.out)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}")
    return paths


def detect_fingerprint(
    args: argparse.Namespace, plan: Plan, engine: EnginePlan | None, ray: RayPlan | None
) -> dict:
    """What determines the results in --out (a resumed run must match it): settings and
    identity; an --engine file's own fingerprint and metadata; --ray's fixed references."""
    if engine is not None:
        return engine.fingerprint(args.max_map_side)
    model, pretrained = model_identity(args, plan.settings)
    finger = fingerprint(
        plan.settings, model=model, pretrained=pretrained, seed=plan.seed, object=args.object,
        mode=args.mode, refs=plan.refs, tta=plan.tta, max_map_side=args.max_map_side,
        **plan.bank.identity(),
    )  # fmt: skip
    if ray is not None and ray.references is not None:
        finger["references"] = list(ray.references)
    return finger


def score_all(
    writer: Any,
    det: Any,
    args: argparse.Namespace,
    plan: Plan,
    paths: Sequence[Path],
    bank: Any = None,
) -> tuple[int, int, set[str], dict[str, tuple[str, ...]]]:
    """Score the inputs not yet in the writer's folder; returns (scored, skipped, modes,
    the notes of the sources that have some: unfamiliar, near_identical, global_change)."""
    names = output_names(paths)
    index_of = {str(p): i for i, p in enumerate(paths)}
    skip = [i for i, p in enumerate(paths) if str(p) in writer.finished]
    count, modes, noted = 0, set(), {}
    stream = det.iter_predict(
        list(index_of), args.object, plan.tta, mode=args.mode, refs=plan.refs,
        progress=True, skip=skip, max_map_side=args.max_map_side or None, bank=bank,
    )  # fmt: skip
    for item in stream:
        if hasattr(item, "reason"):
            writer.add_failure(item)
            warn(f"cannot read {item.source}: {item.reason}")
            continue
        writer.add(item, names[index_of[item.source]], item.source)
        modes.add(item.mode)
        if getattr(item, "notes", ()):
            noted[item.source] = tuple(item.notes)
        count += 1
    return count, len(skip), modes, noted


def run_info(args: argparse.Namespace, det: Any, finger: dict) -> dict:
    return {
        **run_header(finger),
        "model": det.model_name,
        "pretrained": det.weights,
        "random_weights": det.random_weights,
        "seed": det.seed,
        "object": getattr(args, "object", None),
        "mode": args.mode,
        "refs": args.refs,
        "tta": tta_arg(args),
        "settings": dataclasses.asdict(det.settings),
        "runtime": {**dataclasses.asdict(det.runtime), "device": str(det.device)},
    }
