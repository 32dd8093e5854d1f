"""`anoclip export`: the single-image zero-shot scorer as an ONNX / OpenVINO file, its
sidecar and the numpy + Pillow helper beside it, checked against PyTorch
(:mod:`anoclip.deploy.convert`).

    --object --format --out --views --opset -> ExportPlan (extras present, names
    consistent), validated before torch is imported
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anoclip.cli.arguments import add_model_args, check_object
from anoclip.cli.on_engine import FORMATS, RUNTIME_MODULE, changed_settings
from anoclip.cli.plan import Plan
from anoclip.errors import UsageError
from anoclip.extras import check_installed
from anoclip.settings import Settings

NUM_VIEWS = 22  # anoclip.clip.views.NUM_VIEWS (that module imports torch)


def add_export_command(sub: Any) -> None:
    """The `export` subcommand and its options."""
    exp = sub.add_parser(
        "export", help="write the single-image zero-shot scorer as an ONNX or OpenVINO file"
    )
    add_export_args(exp)
    add_model_args(exp)
    # Plan's other inputs: an export is the single-image scorer without TTA
    exp.set_defaults(func=run_export, mode="anoclip", refs=None, tta="none", no_tta=False,
                     visual_backbone=None, visual_pretrained=None)  # fmt: skip


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
    if "image_score" in changed_settings(settings, args.set) and settings.image_score != score:
        raise UsageError(
            f"--set image_score={settings.image_score} disagrees with --views {args.views} "
            f"(which exports image_score={score})"
        )
    for module in ("onnx", "onnxscript", *(("openvino",) if fmt == "openvino" else ())):
        check_installed(module, "export", f"exporting to {fmt}")
    if not args.no_check:
        check_installed(RUNTIME_MODULE[path.suffix.lower()], "export", "checking the export")
    return ExportPlan(path, fmt, args.views, args.opset, not args.no_check)


def run_export(args: argparse.Namespace) -> int:
    """`anoclip export`: the object's zero-shot scorer as an ONNX / OpenVINO file, its
    sidecar and the numpy + Pillow helper beside it, checked against PyTorch."""
    plan = Plan(args)
    target = export_plan(args, plan.settings)
    if plan.runtime.device is None:  # export from the CPU unless told otherwise
        plan.runtime = dataclasses.replace(plan.runtime, device="cpu")

    from anoclip.deploy.convert import CHECK_TOLERANCE, export_model  # the stack loads from here on

    det = plan.detector(args)
    started = time.perf_counter()
    result = export_model(det, args.object, target.path, fmt=target.fmt, views=target.views,
                          opset=target.opset, check=target.check)  # fmt: skip
    size = sum(f.stat().st_size for f in result.files if f not in (result.sidecar, result.helper))
    print(
        f"anoclip: wrote {result.model} ({size / 2**20:.1f} MiB), {result.sidecar.name} and "
        f"{result.helper.name} beside it, in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    if result.max_abs_diff is None:
        print("anoclip: not checked against PyTorch (--no-check)", file=sys.stderr)
    else:
        print(
            f"anoclip: check against PyTorch (2 random inputs, score and map): max |Δ| = "
            f"{result.max_abs_diff:.3g} (tolerance {CHECK_TOLERANCE:g})",
            file=sys.stderr,
        )
    print(
        f"anoclip: run it without torch: python {result.helper} {result.model} IMAGE ... "
        f"or anoclip detect DIR --object {args.object} --engine {result.model} --out OUT",
        file=sys.stderr,
    )
    return 0
