"""`anoclip detect --engine FILE`: scoring with an exported file (``anoclip export``),
validated before torch is imported.

    the file, its sidecar and runtime -> EnginePlan (mode anoclip without TTA; options the
    file cannot honour refused) -> Engine (:mod:`anoclip.deploy.engine`) in place of the
    Detector, same outputs; run.json describes the file in place of the model

Every refusal is a one-line :class:`~anoclip.errors.UsageError` (or
:class:`~anoclip.extras.MissingExtraError` naming the pip extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anoclip.cli.arguments import check_object
from anoclip.cli.plan import Plan
from anoclip.cli.run_folder import run_header
from anoclip.clip.prompts import prompt_name
from anoclip.errors import UsageError
from anoclip.extras import check_installed
from anoclip.settings import DEFAULT_MODEL, DEFAULT_PRETRAINED, Runtime, Settings

FORMATS = {".onnx": "onnx", ".xml": "openvino"}
RUNTIME_MODULE = {".onnx": "onnxruntime", ".xml": "openvino"}


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """`anoclip detect --engine FILE`."""
    p.add_argument(
        "--engine",
        default=None,
        metavar="FILE",
        help="score with an exported file (anoclip export): .onnx with onnxruntime, .xml "
        "with OpenVINO; mode anoclip without TTA, settings from the file",
    )


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
    for key, value in changed_settings(settings, args.set).items():
        if ours.get(key) != value:
            raise UsageError(
                f"setting {key}={value}: {name} was exported with {key}={ours.get(key)}; "
                "re-export with that setting"
            )


def changed_settings(settings: Settings, pairs: list[str]) -> dict[str, Any]:
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


def load_engine(engine: EnginePlan, plan: Plan) -> Any:
    """The exported file's :class:`~anoclip.deploy.engine.Engine` (imports its runtime)."""
    from anoclip.deploy.engine import Engine

    return Engine(engine.path, batch_size=plan.runtime.batch_size)


def engine_run_info(args: argparse.Namespace, engine: EnginePlan, det: Any, finger: dict) -> dict:
    """run.json of an --engine run: the file and its metadata in place of the model's."""
    return {
        **run_header(finger),
        **engine.run_info(),
        "object": args.object,
        "mode": "anoclip",
        "refs": None,
        "tta": "none",
        "runtime": {"batch_size": det.batch_size, "device": "cpu"},
    }
