"""The `anoclip` command line: `anoclip detect`, `anoclip evaluate` and `anoclip export`.

Arguments are parsed and validated — settings, inputs, the output folder, a resumed run's
fingerprint — before torch and open_clip are imported and before anything is written, so
`--help`, `--version` and every usage error answer at once and leave disk untouched.
User errors (:class:`~anoclip.errors.AnoclipError`, ``OSError``) are one line with exit
code 2; any other exception is a bug and shows its traceback.

Decisions (`detect`): ``--normal DIR`` calibrates the ok/defect threshold on known-good
images scored in the same mode and settings (in dual/mutual mode as their own set,
leave-one-out), ``--threshold FILE`` reuses a threshold.json whose settings fingerprint
matches, and without either the unsupervised rule decides once every image is scored.
A resumed folder keeps its own calibrated threshold.json unless told otherwise.

Deployment (:mod:`anoclip.cli.deploy_args` validates): `anoclip export` writes the single-image
zero-shot scorer as an ONNX / OpenVINO file; `detect --engine FILE` scores with such a file
(same outputs; mode anoclip without TTA); `detect --ray [ADDRESS]` scores on a Ray cluster
(:func:`anoclip.deploy.ray_cluster.run_ray`), then decides and reports as a local run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from anoclip import __version__
from anoclip.cli.deploy_args import (
    EnginePlan,
    RayPlan,
    add_engine_args,
    add_export_args,
    add_ray_args,
    engine_plan,
    export_plan,
    ray_plan,
)
from anoclip.clip.prompts import prompt_name
from anoclip.data.listing import expand_inputs, output_names
from anoclip.errors import (
    AnoclipError,
    AnoclipWarning,
    ResultFolderError,
    ThresholdFileError,
    UsageError,
)
from anoclip.settings import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Mode,
    Precision,
    Runtime,
    Settings,
    TTAKind,
    ViewEngine,
    choices,
    differing_fields,
    fingerprint,
    preset,
    ref_count,
)

RUN_INFO = "run.json"
THRESHOLD_FILE = "threshold.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print("anoclip: interrupted; finished results are kept", file=sys.stderr)
            return 130
        except (AnoclipError, OSError) as exc:
            if args.debug:
                traceback.print_exc()
            print(f"anoclip: error: {_one_line(exc)}", file=sys.stderr)
            return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anoclip", description="Zero-shot visual anomaly detection with CLIP (AnoCLIP)."
    )
    parser.add_argument("--version", action="version", version=f"anoclip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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
        default=2048,
        help="longest side of the written maps in pixels (default 2048; 0: the image's size)",
    )
    add_decision_args(det)
    add_visual_args(det)
    add_engine_args(det)
    add_ray_args(det)
    det.set_defaults(func=run_detect, tta=None)  # None: not given (--engine refuses a given one)

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

    exp = sub.add_parser(
        "export", help="write the single-image zero-shot scorer as an ONNX or OpenVINO file"
    )
    add_export_args(exp)
    add_model_args(exp)
    # Plan's other inputs: an export is the single-image scorer without TTA
    exp.set_defaults(func=run_export, mode="anoclip", refs=None, tta="none", no_tta=False,
                     visual_backbone=None, visual_pretrained=None)  # fmt: skip
    return parser


def add_mode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        default="anoclip",
        choices=choices(Mode),
        help="anoclip: each image alone; dual: images in pairs, each the reference of the "
        "other; mutual: each image against --refs others (all inputs form one set)",
    )
    p.add_argument("--refs", default=None, help="mutual mode: references per image, k or 'all'")
    p.add_argument(
        "--tta",
        default="noise",
        choices=choices(TTAKind),
        help="test-time adaptation: noise (AnoCLIP), synth (synthesized anomalies), both",
    )
    p.add_argument("--no-tta", action="store_true", help="same as --tta none")


def add_decision_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decisions (ok / defect, label-free thresholds)")
    g.add_argument(
        "--normal",
        action="append",
        default=[],
        metavar="DIR",
        help="known-good images (folder or file; repeatable), scored like the inputs, that "
        "set the threshold; writes threshold.json",
    )
    g.add_argument(
        "--false-reject",
        default=None,
        metavar="RATE",
        help="with --normal: target rate of good images called defect, in (0, 1) (default 0.01)",
    )
    g.add_argument(
        "--threshold",
        default=None,
        metavar="FILE",
        help="reuse a threshold.json made with the same settings (instead of --normal); "
        "without either, an unsupervised rule over the inputs decides",
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model name or config JSON")
    p.add_argument(
        "--pretrained", default=DEFAULT_PRETRAINED, help="tag, checkpoint file, or 'none'"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--batch-size", type=int, default=Runtime.batch_size)
    p.add_argument(
        "--precision",
        default=Runtime.precision,
        choices=choices(Precision),
        help="fp16: CUDA; bf16: CUDA or CPU; int8: CPU views (all but fp32 move scores slightly)",
    )
    p.add_argument(
        "--view-engine",
        default=Runtime.view_engine,
        choices=choices(ViewEngine),
        help="what runs the 21 augmented views (openvino, onnxruntime: CPU, "
        "pip install anoclip[export])",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="image decoding workers")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set temperature=0.07 --set adapter=linear",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors too")


def add_visual_args(p: argparse.ArgumentParser, evaluate: bool = False) -> None:
    """The visual feature source and banks of known-good images
    (:mod:`anoclip.references.patch_scorer`)."""
    g = p.add_argument_group("visual references (feature source, banks of known-good images)")
    g.add_argument(
        "--visual-backbone",
        default=None,
        metavar="SPEC",
        help="visual-branch features: clip (default) or timm:<model name>, e.g. "
        "timm:tf_efficientnet_lite0 (needs --visual-pretrained)",
    )
    g.add_argument(
        "--visual-pretrained", default=None, metavar="FILE", help="local checkpoint of a timm one"
    )
    if evaluate:
        g.add_argument(
            "--train-bank",
            action="store_true",
            help="each category's train/good images form its bank of known-good patches "
            "(its label-free 'normal' threshold is then not computed)",
        )
        return
    g.add_argument(
        "--bank-images",
        action="append",
        default=[],
        metavar="DIR",
        help="known-good images (folder or file; repeatable) whose patches every input is "
        "matched against (alone in anoclip mode, with the references in dual/mutual); "
        "keep them apart from --normal, which calibrates the threshold",
    )
    g.add_argument("--bank", default=None, metavar="FILE", help="a bank saved by --save-bank")
    g.add_argument(
        "--save-bank", default=None, metavar="FILE", help="save the --bank-images bank to FILE"
    )


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
    return dataclasses.replace(settings, **values) if values else settings


# ----------------------------------------------------------------------------- settings


def parse_settings(pairs: Sequence[str]) -> tuple[Settings, dict[str, Any]]:
    """`KEY=VALUE` strings -> (Settings, runtime fields), values parsed by the field's
    default type. Raises UsageError naming the pair."""
    defaults, runtime = Settings(), Runtime()
    values: dict[str, object] = {}
    run: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        target = values if key in Settings.names() else run
        if not sep or key not in (*Settings.names(), *Runtime.names()):
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE with KEY in {Settings.names()}")
        default = getattr(defaults if target is values else runtime, key)
        target[key] = _parse_value(raw.strip(), default, key)
    return dataclasses.replace(defaults, **values), run


def _parse_value(raw: str, default: object, key: str) -> object:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            if key == "patch_grid" and not raw.isdigit():
                return raw  # a stride or a word ("finest", "coarsest")
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--set {key}={raw}: not a valid {type(default).__name__}") from None
    return None if raw.lower() == "none" and default is None else raw


def tta_arg(args: argparse.Namespace) -> str:
    return "none" if args.no_tta else (args.tta or "noise")


def refs_arg(args: argparse.Namespace) -> int | str | None:
    """--refs as given -> validated references per image for --mode."""
    raw = args.refs
    if raw is not None and raw != "all":
        try:
            raw = int(raw)
        except ValueError:
            raise UsageError(
                f"--refs {args.refs!r}: expected a positive integer or 'all'"
            ) from None
    try:
        ref_count(args.mode, raw)
    except UsageError as exc:
        raise UsageError(f"--refs {args.refs!r}: {exc}") from None
    return raw


def model_identity(args: argparse.Namespace) -> tuple[str, str]:
    """Model and weights as they enter the fingerprint (files by absolute path)."""

    def resolved(value: str) -> str:
        return str(Path(value).resolve()) if Path(value).is_file() else value

    return resolved(args.model), resolved(args.pretrained or "none")


class Plan:
    """Everything `anoclip detect` will do, validated before the stack loads."""

    def __init__(self, args: argparse.Namespace, preset_values: dict | None = None) -> None:
        self.settings, run = parse_settings(args.set)
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
        self.tta = tta_arg(args)
        self.refs = refs_arg(args)
        self.seed = args.seed
        self.bank = plan_bank(args)
        if self.settings.bank_search == "ivf":
            from anoclip.extras import check_installed  # no torch

            check_installed("faiss", "ann", "bank_search=ivf")
        has_bank = self.bank.used or getattr(args, "train_bank", False)
        alone = getattr(args, "mode", "anoclip") == "anoclip"
        s = self.settings
        normals = getattr(args, "normal", None)
        if s.patch_scorer and alone and not has_bank:
            if normals:
                # few-shot: the known-good images are the bank; each calibrates the threshold
                # against the bank without itself (Detector.calibrate(normals_are_bank=True))
                self.bank = BankPlan(expand_inputs(normals), from_normals=True)
            elif s.fusion == "visual":
                raise UsageError(
                    "fusion=visual needs visual references: --mode dual/mutual, or a bank "
                    "(--normal DIR, --bank-images DIR, --bank FILE)"
                )
            else:
                _warn(
                    f"--visual-backbone {s.visual_backbone} is unused: anoclip mode without a "
                    "bank has no visual references (--mode dual/mutual, --normal DIR, "
                    "--bank-images DIR)"
                )

    def detector(self, args: argparse.Namespace):
        """Load the model stack (the first import of torch) and build the Detector."""
        from anoclip.detector import Detector

        return Detector(args.model, args.pretrained, seed=self.seed, settings=self.settings,
                        runtime=self.runtime)  # fmt: skip


# ----------------------------------------------------------------------------- detect


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
    decisions = plan_decisions(args, thr_id)
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
                      overlays=not args.no_overlay, threshold=threshold) as writer:  # fmt: skip
        writer.write_run_info(info)
        count, skipped, modes = score_all(writer, det, args, plan, paths, bank)
        errors = writer.num_errors
        if modes:
            writer.write_run_info({**info, "modes_used": sorted(modes)})
    elapsed = time.perf_counter() - started
    final, rows = writer.finalize(thr_id)
    page = write_detect_report(out, rows, final, info, args)
    print_done(out, (count, skipped, errors), elapsed, rows, final, page)
    return 1 if errors else 0


def print_done(
    out: Path,
    counts: tuple[int, int, int],
    elapsed: float,
    rows: Sequence[dict],
    final: Any,
    page: Path | None,
) -> None:
    """The closing log line of `anoclip detect`; counts: (scored, skipped, unreadable)."""
    count, skipped, errors = counts
    print(
        f"anoclip: scored {count} image(s) in {elapsed:.1f} s"
        + (f", skipped {skipped} already done" if skipped else "")
        + (f", {errors} unreadable (see {out / 'errors.csv'})" if errors else "")
        + f"; {decision_summary(rows, final)}; results in {out}"
        + (f", report {page}" if page else ""),
        file=sys.stderr,
    )
    if final is not None and final.unsupervised:
        _warn(
            f"decisions come from an UNSUPERVISED threshold (median + {final.inputs['k']:g}"
            f"·1.4826·MAD of these {len(rows)} scores): no false-reject guarantee, and it "
            "misses defects unless they are a minority; pass --normal DIR of known-good images"
        )


def detect_fingerprint(
    args: argparse.Namespace, plan: Plan, engine: EnginePlan | None, ray: RayPlan | None
) -> dict:
    """What determines the results in --out (a resumed run must match it): settings and
    identity; an --engine file's own fingerprint and metadata; --ray's fixed references."""
    if engine is not None:
        return engine.fingerprint(args.max_map_side)
    model, pretrained = model_identity(args)
    finger = fingerprint(
        plan.settings, model=model, pretrained=pretrained, seed=plan.seed, object=args.object,
        mode=args.mode, refs=plan.refs, tta=plan.tta, max_map_side=args.max_map_side,
        **plan.bank.identity(),
    )  # fmt: skip
    if ray is not None and ray.references is not None:
        finger["references"] = list(ray.references)
    return finger


def detect_inputs(args: argparse.Namespace) -> list[Path]:
    """The validated images of `anoclip detect` (and its other plain options)."""
    try:
        prompt_name(args.object)
    except ValueError as exc:
        raise UsageError(f"--object {args.object!r}: {exc}") from None
    if args.max_map_side < 0:
        raise UsageError("--max-map-side must be >= 0")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    paths = expand_inputs(args.inputs)
    if not paths:
        raise UsageError(f"no images found in {' '.join(args.inputs)}")
    return paths


def score_all(
    writer: Any,
    det: Any,
    args: argparse.Namespace,
    plan: Plan,
    paths: Sequence[Path],
    bank: Any = None,
) -> tuple[int, int, set[str]]:
    """Score the inputs not yet in the writer's folder; returns (scored, skipped, modes)."""
    names = output_names(paths)
    index_of = {str(p): i for i, p in enumerate(paths)}
    skip = [i for i, p in enumerate(paths) if str(p) in writer.finished]
    count, modes = 0, set()
    stream = det.iter_predict(
        list(index_of), args.object, plan.tta, mode=args.mode, refs=plan.refs,
        progress=True, skip=skip, max_map_side=args.max_map_side or None, bank=bank,
    )  # fmt: skip
    for item in stream:
        if hasattr(item, "reason"):
            writer.add_failure(item)
            _warn(f"cannot read {item.source}: {item.reason}")
            continue
        writer.add(item, names[index_of[item.source]], item.source)
        modes.add(item.mode)
        count += 1
    return count, len(skip), modes


# ----------------------------------------------------------------------------- decisions


@dataclasses.dataclass
class Decisions:
    """Where `anoclip detect` gets its ok / defect threshold, settled before the stack loads.

    source: "normal" (calibrate on `normals`), "file" (--threshold), "folder" (a resumed
    folder's own calibrated threshold.json) or "unsupervised" (decided at the end).
    threshold: the :class:`~anoclip.decide.calibrate.Threshold` when known before scoring.
    """

    source: str = "unsupervised"
    normals: list[Path] = dataclasses.field(default_factory=list)
    false_reject: float | None = None
    threshold: Any = None
    file: Path | None = None

    def describe(self) -> dict[str, Any]:
        """For run.json."""
        out: dict[str, Any] = {"threshold": self.source}
        if self.normals:
            out.update(normals=len(self.normals), false_reject=self.false_reject)
        if self.file is not None:
            out["threshold_file"] = str(self.file.resolve())
        return out


def threshold_id(finger: dict) -> dict:
    """The fingerprint a threshold is calibrated under: the run's, less what only shapes
    the written files (--max-map-side) or runs the same scores (an --engine file's
    metadata), so a threshold.json is reusable across them — and between an exported file
    and PyTorch with the settings it was exported with (``--tta none``, its image score)."""
    return {k: v for k, v in finger.items() if k not in ("max_map_side", "engine")}


def false_reject_arg(raw: str | None) -> float:
    """--false-reject as given -> α in (0, 1) (default 0.01); UsageError otherwise."""
    if raw is None:
        from anoclip.decide.calibrate import DEFAULT_FALSE_REJECT

        return DEFAULT_FALSE_REJECT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:  # NaN fails too
        raise UsageError(
            f"--false-reject {raw!r}: expected a rate in (0, 1), e.g. 0.01 for 1 % of good "
            "images called defect"
        )
    return value


def plan_decisions(args: argparse.Namespace, thr_id: dict) -> Decisions:
    """--normal / --false-reject / --threshold -> Decisions (validated, no torch)."""
    alpha = false_reject_arg(args.false_reject)
    if args.normal and args.threshold:
        raise UsageError(
            "--normal and --threshold exclude each other: calibrate on known-good images, "
            "or reuse a threshold file"
        )
    if args.false_reject is not None and not args.normal:
        raise UsageError("--false-reject needs --normal DIR (the known-good images it sets)")
    if args.threshold:
        path = Path(args.threshold)
        return Decisions("file", threshold=load_threshold(path, thr_id, "--threshold"), file=path)
    if not args.normal:
        return Decisions()
    from anoclip.decide.calibrate import MIN_NORMALS

    normals = expand_inputs(args.normal)
    if len(normals) < MIN_NORMALS:
        raise UsageError(
            f"--normal {' '.join(args.normal)}: {len(normals)} image(s), need at least "
            f"{MIN_NORMALS} known-good images"
        )
    return Decisions("normal", normals, alpha)


def load_threshold(path: Path, thr_id: dict, what: str) -> Any:
    """A threshold file whose settings equal `thr_id` (ThresholdFileError naming the
    differing fields otherwise)."""
    from anoclip.threshold import Threshold

    threshold = Threshold.from_json(path)
    changed = differing_fields(threshold.settings, json.loads(json.dumps(thr_id)))
    if changed:
        shown = ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else "")
        raise ThresholdFileError(
            f"{what} {path}: calibrated with other settings ({shown}); use the settings it "
            "was made with, or recalibrate with --normal"
        )
    if what == "--threshold":
        inputs = {**threshold.inputs, "from_file": str(path.resolve())}
        threshold = dataclasses.replace(threshold, inputs=inputs)
    return threshold


def resumed_decisions(decisions: Decisions, out: Path, resume: bool, thr_id: dict) -> Decisions:
    """A resumed run with no threshold options keeps the folder's calibrated threshold."""
    folder_file = out / THRESHOLD_FILE
    if decisions.source != "unsupervised" or not resume or not folder_file.is_file():
        return decisions
    threshold = load_threshold(folder_file, thr_id, "--resume:")
    if threshold.unsupervised:
        return decisions  # recomputed over all rows at the end
    return Decisions("folder", threshold=threshold, file=folder_file)


def calibrate_on_normals(
    det: Any,
    decisions: Decisions,
    args: argparse.Namespace,
    plan: Plan,
    thr_id: dict,
    bank: Any = None,
) -> Any:
    """The threshold from the --normal images, scored in the run's mode and settings."""
    if args.mode != "anoclip" and plan.settings.fusion == "batch_z":
        _warn(
            "fusion=batch_z normalises over the set, so the known-good images (scored as "
            "their own set) and the inputs are on different scales; prefer fusion=linear"
        )
    print(f"anoclip: calibrating on {len(decisions.normals)} known-good image(s)", file=sys.stderr)
    loo = {"normals_are_bank": True} if plan.bank.from_normals else {}  # Detector only
    threshold = det.calibrate(
        [str(p) for p in decisions.normals], args.object, decisions.false_reject, plan.tta,
        mode=args.mode, refs=plan.refs, settings_id=thr_id, progress=True, bank=bank, **loo,
    )  # fmt: skip
    inputs = {**threshold.inputs, "normal_inputs": [str(Path(d).resolve()) for d in args.normal]}
    return dataclasses.replace(threshold, inputs=inputs)


def decision_summary(rows: Sequence[dict], threshold: Any) -> str:
    """'3 defect, 9 ok (threshold 0.51, normal: 4 known-good images, ...)' for the log."""
    if threshold is None:
        return "no decisions"
    defect = sum(r["decision"] == "defect" for r in rows)
    how = threshold.method
    if not threshold.unsupervised:
        n, alpha = threshold.inputs.get("n_normal"), threshold.inputs.get("false_reject")
        how += f" from {n} known-good images, target false-reject rate {alpha}"
    t = threshold.image_threshold
    return f"{defect} defect, {len(rows) - defect} ok (threshold {t:.6g}, {how})"


def write_detect_report(
    out: Path, rows: Sequence[dict], threshold: Any, info: dict, args: argparse.Namespace
) -> Path | None:
    """OUT/report.html over all rows of the folder, maps on the fixed scale [0, 1]."""
    if not rows:
        return None
    from anoclip.results.overlays import FIXED_SCALE
    from anoclip.results.report import write_report
    from anoclip.results.writer import report_rows

    keys = ("anoclip", "object", "model", "pretrained", "random_weights", "seed", "mode", "refs",
            "tta", "decisions", "settings")  # fmt: skip
    shown = {k: info[k] for k in keys if k in info}
    title = f"anoclip detect: {args.object}" + (
        " (RANDOM weights: scores meaningless)" if info.get("random_weights") else ""
    )
    return write_report(out, report_rows(out, rows), threshold, shown, title, scale=FIXED_SCALE)


def check_output_folder(out: Path, resume: bool, overwrite: bool, finger: dict) -> None:
    """Refuse, before anything is written or loaded: a file in place of the folder, a
    folder that cannot be written, earlier results without --resume/--overwrite, and a
    resume whose settings fingerprint differs from the earlier run's."""
    if out.exists() and not out.is_dir():
        raise ResultFolderError(f"--out {out}: is an existing file, not a folder")
    _check_writable(out)
    scores = out / "scores.csv"
    has_results = scores.is_file() and scores.stat().st_size > 0
    if has_results and not (resume or overwrite):
        raise ResultFolderError(
            f"--out {out} holds the results of an earlier run; pass --resume to continue it "
            "or --overwrite to replace it"
        )
    if resume and has_results:
        earlier = _earlier_fingerprint(out / RUN_INFO)
        changed = differing_fields(earlier, json.loads(json.dumps(finger)))
        if changed:
            raise ResultFolderError(
                f"--resume: {out} was made with different settings ({', '.join(changed)}); "
                "use the same settings, another --out, or --overwrite"
            )


def _check_writable(out: Path) -> None:
    """Create the folder if needed and write (then remove) a probe file in it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".anoclip-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ResultFolderError(f"--out {out}: cannot write there ({reason})") from None


def _earlier_fingerprint(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ResultFolderError(
            f"--resume: {path} is missing or unreadable, so the earlier run's settings are "
            "unknown; use another --out or --overwrite"
        ) from None


def run_header(finger: dict) -> dict:
    """The first keys of every run.json: version, command line, result fingerprint."""
    return {"anoclip": __version__, "command": " ".join(sys.argv), "fingerprint": finger}


def run_info(args: argparse.Namespace, det: Any, finger: dict) -> dict:
    return {
        **run_header(finger),
        "model": det.backbone.name,
        "pretrained": det.backbone.pretrained,
        "random_weights": det.backbone.random_weights,
        "seed": det.seed,
        "object": getattr(args, "object", None),
        "mode": args.mode,
        "refs": args.refs,
        "tta": tta_arg(args),
        "settings": dataclasses.asdict(det.settings),
        "runtime": {**dataclasses.asdict(det.runtime), "device": str(det.device)},
    }


# ----------------------------------------------------------------------------- engine, ray


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
    if args.overwrite:  # here, so run.json below survives (run_ray then only resumes)
        clear_folder(out)
    thr_id = threshold_id(finger)
    threshold = decisions.threshold
    if decisions.normals:
        threshold = calibrate_on_normals(plan.detector(args), decisions, args, plan, thr_id)
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
                    _warn(f"cannot read {source}: {error}")
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


# ----------------------------------------------------------------------------- export


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


# ----------------------------------------------------------------------------- evaluate


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


# ----------------------------------------------------------------------------- messages


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text


def _warn(text: str) -> None:
    _write_line(f"anoclip: warning: {text}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Every warning as one `anoclip: warning:` line (above any progress bar)."""
    text = " ".join(str(message).split())
    text = text.removeprefix("anoclip: ").removeprefix("warning: ")
    if not issubclass(category, (AnoclipWarning, UserWarning, DeprecationWarning)):
        text = f"{category.__name__}: {text}"
    _write_line(f"anoclip: warning: {text}")


def _write_line(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
