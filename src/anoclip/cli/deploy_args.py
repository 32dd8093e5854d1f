"""Command-line plans of the deployment paths, validated before torch is imported:
`anoclip export`, `anoclip detect --engine FILE` and `anoclip detect --ray [ADDRESS]`.

    export:           --object --format --out --views --opset  -> ExportPlan
    detect --engine:  the exported file, its sidecar and runtime -> EnginePlan
                      (mode anoclip without TTA; options the file cannot honour refused)
    detect --ray:     --actors --cpus-per-actor --gpus-per-actor --references -> RayPlan
                      (set modes only against fixed references: all-pairs is O(N²))

Nothing here imports torch or writes a byte; every refusal is a one-line
:class:`~anoclip.errors.UsageError` (or :class:`~anoclip.extras.MissingExtraError` naming
the pip extra). :mod:`anoclip.cli.app` runs the plans.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anoclip.clip.prompts import prompt_name
from anoclip.data.listing import expand_inputs
from anoclip.errors import UsageError
from anoclip.extras import check_installed
from anoclip.settings import DEFAULT_MODEL, DEFAULT_PRETRAINED, Runtime, Settings

FORMATS = {".onnx": "onnx", ".xml": "openvino"}
RUNTIME_MODULE = {".onnx": "onnxruntime", ".xml": "openvino"}
NUM_VIEWS = 22  # anoclip.clip.views.NUM_VIEWS (that module imports torch)
LOCAL_RAY = ""  # `--ray` without an address: start or join a local Ray


# ----------------------------------------------------------------------------- arguments


def add_export_args(p: argparse.ArgumentParser) -> None:
    """The options of `anoclip export` (the model options are added by the caller)."""
    p.add_argument("--object", required=True, help="object name, e.g. screw or metal_nut")
    p.add_argument(
        "--out", required=True, metavar="FILE", help="the model file: NAME.onnx or NAME.xml"
    )
    p.add_argument(
        "--format",
        default=None,
        choices=tuple(FORMATS.values()),
        help="onnx (onnxruntime) or openvino (default: from the --out suffix)",
    )
    p.add_argument(
        "--views",
        type=int,
        default=1,
        choices=(1, NUM_VIEWS),
        help="image score: 1 = the CLS score (default), 22 = the 22-view score",
    )
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip running the file against PyTorch (max |Δ| ≤ 1e-4) after writing it",
    )


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """`anoclip detect --engine FILE`."""
    p.add_argument(
        "--engine",
        default=None,
        metavar="FILE",
        help="score with an exported file (anoclip export): .onnx with onnxruntime, .xml "
        "with OpenVINO; mode anoclip without TTA, settings from the file",
    )


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


# ----------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportPlan:
    """What `anoclip export` writes: `path` in `fmt` with `views` views at `opset`."""

    path: Path
    fmt: str
    views: int
    opset: int | None
    check: bool


def export_plan(args: argparse.Namespace, settings: Settings) -> ExportPlan:
    """Validated `anoclip export` options (extras present, names consistent)."""
    check_object(args.object)
    path = Path(args.out)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"--out {path}: name the file .onnx (ONNX) or .xml (OpenVINO)")
    if args.format is not None and args.format != fmt:
        want = next(k for k, v in FORMATS.items() if v == args.format)
        raise UsageError(f"--out {path}: a --format {args.format} file must be named *{want}")
    if path.is_dir():
        raise UsageError(f"--out {path}: is a folder; give the model file's name")
    if args.views == NUM_VIEWS and args.opset is not None and args.opset < 16:
        raise UsageError(f"--views 22 needs ONNX GridSample: --opset >= 16, not {args.opset}")
    if settings.tiling != "none":
        raise UsageError(f"--set tiling={settings.tiling}: an export scores square inputs only")
    score = "cls" if args.views == 1 else "cls_aug22"
    if "image_score" in _changed_settings(settings, args.set) and settings.image_score != score:
        raise UsageError(
            f"--set image_score={settings.image_score} disagrees with --views {args.views} "
            f"(which exports image_score={score})"
        )
    for module in ("onnx", "onnxscript", *(("openvino",) if fmt == "openvino" else ())):
        check_installed(module, "export", f"exporting to {fmt}")
    if not args.no_check:
        check_installed(RUNTIME_MODULE[path.suffix.lower()], "export", "checking the export")
    return ExportPlan(path, fmt, args.views, args.opset, not args.no_check)


def check_object(name: str) -> None:
    try:
        prompt_name(name)
    except ValueError as exc:
        raise UsageError(f"--object {name!r}: {exc}") from None


# ----------------------------------------------------------------------------- engine


@dataclass
class EnginePlan:
    """An exported file, checked for `anoclip detect --engine`: path, sidecar `meta`."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self, max_map_side: int) -> dict[str, Any]:
        """The run's fingerprint: the file's own (Detector form: model, weights, seed,
        object, mode anoclip, tta none, settings) plus the file's metadata."""
        return {**self.meta["fingerprint"], "max_map_side": max_map_side,
                "engine": self.identity()}  # fmt: skip

    def identity(self) -> dict[str, Any]:
        """The sidecar's metadata less its fingerprint (already in the run's)."""
        return _json({k: v for k, v in self.meta.items() if k != "fingerprint"})

    def run_info(self) -> dict[str, Any]:
        """run.json fields describing the file (as a Detector run describes its model)."""
        m = self.meta
        return {
            "engine": {"file": str(self.path.resolve()), **self.identity()},
            "model": m["model"],
            "pretrained": m["pretrained"],
            "random_weights": m["random_weights"],
            "seed": m["seed"],
            "settings": m["fingerprint"]["settings"],
        }


def engine_plan(
    args: argparse.Namespace, settings: Settings, runtime: Runtime
) -> EnginePlan | None:
    """The validated --engine file, or None without --engine. Refuses what the file cannot
    honour: set modes, TTA, model options and settings other than the file's."""
    if args.engine is None:
        return None
    path = Path(args.engine)
    if path.suffix.lower() not in FORMATS:
        raise UsageError(f"--engine {path}: expected an exported .onnx or .xml file")
    if not path.is_file():
        raise UsageError(f"--engine {path}: no such file")
    from anoclip.data import standalone as engine_helper  # numpy + Pillow: not needed by --help

    try:
        meta = engine_helper.read_meta(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--engine {path}: {exc}") from None
    _refuse_engine_conflicts(args, path.name, meta, settings, runtime)
    _check_engine_object(path.name, meta, args.object)
    check_installed(RUNTIME_MODULE[path.suffix.lower()], "export", f"running {path.name}")
    return EnginePlan(path, meta)


def _refuse_engine_conflicts(
    args: argparse.Namespace, name: str, meta: dict, settings: Settings, runtime: Runtime
) -> None:
    """Options an exported file cannot honour: it scores each image alone, without TTA,
    with the model, weights and settings it was exported with, on the CPU."""
    if getattr(args, "ray", None) is not None:
        raise UsageError("--engine and --ray exclude each other (Ray actors run PyTorch)")
    if args.mode != "anoclip" or args.refs is not None:
        raise UsageError(f"--engine {name} scores each image alone: --mode anoclip, no --refs")
    if args.tta not in (None, "none"):
        raise UsageError(f"--engine {name} scores without TTA: drop --tta {args.tta}")
    given = {"--model": (args.model, DEFAULT_MODEL),
             "--pretrained": (args.pretrained, DEFAULT_PRETRAINED), "--seed": (args.seed, 0),
             "--precision": (runtime.precision, Runtime.precision),
             "--view-engine": (runtime.view_engine, Runtime.view_engine)}  # fmt: skip
    for flag, (value, default) in given.items():
        if value != default:
            raise UsageError(
                f"{flag} {value}: --engine {name} carries its own model, weights and numerics "
                "(see its .json); re-export to change them"
            )
    for flag in ("bank_images", "bank", "save_bank"):
        if getattr(args, flag, None):
            raise UsageError(f"--{flag.replace('_', '-')}: --engine {name} has no visual branch")
    if runtime.device not in (None, "cpu"):
        raise UsageError(f"--device {runtime.device}: --engine {name} runs on the CPU")
    ours = {**_json(dataclasses.asdict(Settings())), **meta["fingerprint"]["settings"]}
    for key, value in _changed_settings(settings, args.set).items():
        if ours.get(key) != value:
            raise UsageError(
                f"setting {key}={value}: {name} was exported with {key}={ours.get(key)}; "
                "re-export with that setting"
            )


def _changed_settings(settings: Settings, pairs: list[str]) -> dict[str, Any]:
    """The settings given (`--set` KEY=VALUE `pairs`) or differing from the defaults (by
    any other option), in JSON form."""
    given = {pair.partition("=")[0].strip().replace("-", "_") for pair in pairs}
    now, default = _json(dataclasses.asdict(settings)), _json(dataclasses.asdict(Settings()))
    return {k: v for k, v in now.items() if k in given or v != default[k]}


def _json(value: Any) -> Any:
    """JSON form (tuples as lists), as fingerprints compare after a round trip."""
    return json.loads(json.dumps(value))


def _check_engine_object(name: str, meta: dict, object_name: str) -> None:
    """The file's text embeddings are those of one object."""
    check_object(object_name)
    theirs = prompt_name(object_name, meta.get("class_names", "clean"))
    if object_name != meta["object"] and theirs != meta["prompt_name"]:
        raise UsageError(
            f"--engine {name} was exported for object {meta['object']!r}, not "
            f"{object_name!r}; export one file per object"
        )


# ----------------------------------------------------------------------------- ray


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
