"""`anoclip detect --ray [ADDRESS]`: the inputs scored on a Ray cluster
(:func:`anoclip.deploy.ray_cluster.run_ray`), then decided and reported as a local run.

    --actors --cpus-per-actor --gpus-per-actor --references -> RayPlan, validated before
    Ray or torch is imported (set modes only against fixed references: all-pairs is O(N²))
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from anoclip.cli.messages import warn
from anoclip.cli.plan import Plan
from anoclip.cli.run_folder import run_header
from anoclip.cli.verdicts import (
    Decisions,
    calibrate_on_normals,
    print_done,
    threshold_id,
    write_detect_report,
)
from anoclip.data.listing import expand_inputs
from anoclip.errors import UsageError
from anoclip.extras import check_installed

LOCAL_RAY = ""  # `--ray` without an address: start or join a local Ray


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """`anoclip detect --ray [ADDRESS]` and its resources."""
    g = p.add_argument_group("scale-out on Ray (pip install anoclip[ray])")
    g.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        default=None,
        metavar="ADDRESS",
        help="score on a Ray cluster: HEAD:6379, ray://HEAD:10001 or auto; alone: start or "
        "join a local Ray (put it after the inputs)",
    )
    g.add_argument("--actors", type=int, default=None, help="actors (default: one per GPU or CPU)")
    g.add_argument("--cpus-per-actor", type=float, default=None, help="CPUs per actor (default 1)")
    g.add_argument(
        "--gpus-per-actor",
        type=float,
        default=None,
        help="GPUs per actor (default 1 when the cluster has GPUs, else 0)",
    )
    g.add_argument(
        "--references",
        action="append",
        default=[],
        metavar="DIR_OR_FILE",
        help="with --mode dual/mutual: fixed reference images (e.g. known-good ones), "
        "encoded once and shared; repeatable",
    )


@dataclass(frozen=True)
class RayPlan:
    """Validated `--ray` options. address None: start or join a local Ray."""

    address: str | None
    actors: int | None
    cpus_per_actor: float
    gpus_per_actor: float | None
    references: tuple[str, ...] | None

    def describe(self) -> dict[str, Any]:
        """For run.json."""
        refs = None if self.references is None else len(self.references)
        return {"address": self.address or "local", "actors": self.actors,
                "cpus_per_actor": self.cpus_per_actor, "gpus_per_actor": self.gpus_per_actor,
                "references": refs}  # fmt: skip


def ray_plan(args: argparse.Namespace) -> RayPlan | None:
    """The validated --ray options, or None without --ray (then its options are refused)."""
    if args.ray is None:
        _refuse_ray_options_alone(args)
        return None
    address = args.ray or None
    if address is not None and Path(address).exists():
        raise UsageError(
            f"--ray took {address!r} as the cluster address; put --ray after the inputs or "
            "write --ray=auto"
        )
    _check_resources(args)
    refs = _references(args)
    for flag in ("bank_images", "bank", "save_bank"):
        if getattr(args, flag, None):
            raise UsageError(f"--{flag.replace('_', '-')} is not supported with --ray yet")
    if args.normal and args.mode != "anoclip":
        raise UsageError(
            "--ray with --normal calibrates in mode anoclip only; pass --threshold FILE "
            "calibrated on the same references"
        )
    check_installed("ray", "ray", "anoclip detect --ray")
    check_installed("pyarrow", "ray", "anoclip detect --ray")
    cpus = 1.0 if args.cpus_per_actor is None else args.cpus_per_actor
    return RayPlan(address, args.actors, cpus, args.gpus_per_actor, refs)


def _refuse_ray_options_alone(args: argparse.Namespace) -> None:
    for flag, value in (("--actors", args.actors), ("--cpus-per-actor", args.cpus_per_actor),
                        ("--gpus-per-actor", args.gpus_per_actor),
                        ("--references", args.references or None)):  # fmt: skip
        if value is not None:
            raise UsageError(f"{flag} needs --ray (it sets up the Ray actors)")


def _check_resources(args: argparse.Namespace) -> None:
    if args.actors is not None and args.actors < 1:
        raise UsageError(f"--actors {args.actors}: must be >= 1")
    if args.cpus_per_actor is not None and not args.cpus_per_actor > 0:
        raise UsageError(f"--cpus-per-actor {args.cpus_per_actor}: must be > 0")
    if args.gpus_per_actor is not None and not args.gpus_per_actor >= 0:
        raise UsageError(f"--gpus-per-actor {args.gpus_per_actor}: must be >= 0")


def _references(args: argparse.Namespace) -> tuple[str, ...] | None:
    """--references as absolute image paths; required by (and only by) the set modes."""
    if args.mode == "anoclip":
        if args.references:
            raise UsageError("--references is for --mode dual or mutual (fixed references)")
        return None
    if not args.references:
        raise UsageError(
            f"--ray --mode {args.mode} over all inputs compares every image with every other: "
            "O(N²) work and every image's tokens in one process, which does not scale out. "
            "Pass --references DIR (fixed normal images, encoded once and shared), or run "
            "without --ray"
        )
    paths = expand_inputs(args.references)
    if not paths:
        raise UsageError(f"--references {' '.join(args.references)}: no images found")
    return tuple(str(p.resolve()) for p in paths)


def detect_on_ray(
    args: argparse.Namespace,
    plan: Plan,
    ray: RayPlan,
    paths: Sequence[Path],
    finger: dict,
    decisions: Decisions,
) -> int:
    """`anoclip detect --ray`: the inputs scored by :func:`~anoclip.deploy.ray_cluster.run_ray`
    (maps and commit log in --out), then decided, thresholded and reported as a local run."""
    from anoclip.deploy.ray_cluster import clear_folder
    from anoclip.results.writer import ResultWriter, write_run_info  # the stack loads from here on

    out = Path(args.out)
    thr_id = threshold_id(finger)
    threshold = decisions.threshold
    if decisions.normals:
        threshold = calibrate_on_normals(plan.detector(args), decisions, args, plan, thr_id)
    out.mkdir(parents=True, exist_ok=True)  # scoring starts
    if args.overwrite:  # here, so run.json below survives (run_ray then only resumes)
        clear_folder(out)
    info = {**ray_run_info(args, plan, ray, finger), "decisions": decisions.describe()}
    write_run_info(out, info)
    summary = score_on_ray(args, plan, ray, paths)
    write_run_info(out, {**info, "ray": {**info["ray"], "actors": summary.actors}})
    with ResultWriter(out, resume=True, overlays=False, threshold=threshold) as writer:
        pass  # re-decides the rows with the known threshold (or clears them)
    final, rows = writer.finalize(thr_id)
    page = write_detect_report(out, rows, final, info, args)
    counts = (summary.scored, summary.skipped, summary.failed)
    print_done(out, counts, summary.seconds, rows, final, page)
    return 1 if summary.failed else 0


def score_on_ray(args: argparse.Namespace, plan: Plan, ray: RayPlan, paths: Sequence[Path]) -> Any:
    """run_ray over `paths` with a progress bar; returns its RaySummary."""
    from anoclip.deploy.ray_cluster import run_ray
    from anoclip.results.writer import SCORES, read_finished

    sources = [str(p) for p in paths]
    done = read_finished(Path(args.out) / SCORES) if args.resume else set()
    skipped = sum(s in done for s in sources)
    kwargs = {"model": args.model, "pretrained": args.pretrained, "seed": plan.seed,
              "settings": plan.settings, "runtime": plan.runtime}  # fmt: skip
    with tqdm(total=len(sources), initial=skipped, unit="img", desc=args.object) as bar:

        def on_batch(batch: dict) -> None:
            for source, error in zip(batch["source"], batch["error"]):
                if error:
                    warn(f"cannot read {source}: {error}")
            bar.update(len(batch["source"]))

        return run_ray(
            sources, args.object, args.out, kwargs, ray.address, tta=plan.tta,
            mode=args.mode, refs=plan.refs, references=ray.references,
            num_actors=ray.actors, cpus_per_actor=ray.cpus_per_actor,
            gpus_per_actor=ray.gpus_per_actor, batch_size=plan.runtime.batch_size,
            max_map_side=args.max_map_side or None, overlays=not args.no_overlay,
            resume=True, on_batch=on_batch,
        )  # fmt: skip


def ray_run_info(args: argparse.Namespace, plan: Plan, ray: RayPlan, finger: dict) -> dict:
    """run.json of a --ray run (written before scoring; no model is loaded on the driver)."""
    return {
        **run_header(finger),
        "model": args.model,
        "pretrained": args.pretrained,
        "random_weights": str(args.pretrained or "none").lower() == "none",
        "seed": plan.seed,
        "object": args.object,
        "mode": args.mode,
        "refs": args.refs,
        "tta": plan.tta,
        "settings": dataclasses.asdict(plan.settings),
        "runtime": dataclasses.asdict(plan.runtime),
        "ray": ray.describe(),
    }
