"""The `anoclip` command line: `anoclip detect` and `anoclip evaluate`.

Arguments are parsed and validated — settings, inputs, the output folder, a resumed run's
fingerprint — before torch and open_clip are imported and before anything is written, so
`--help`, `--version` and every usage error answer at once and leave disk untouched.
User errors (:class:`~anoclip.errors.AnoclipError`, ``OSError``) are one line with exit
code 2; any other exception is a bug and shows its traceback.
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

from . import __version__
from .errors import AnoclipError, AnoclipWarning, ResultFolderError, UsageError
from .listing import expand_inputs, output_names
from .prompts import prompt_name
from .settings import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Mode,
    Precision,
    Runtime,
    Settings,
    TTAKind,
    choices,
    differing_fields,
    fingerprint,
    preset,
    ref_count,
)

RUN_INFO = "run.json"


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
    det.set_defaults(func=run_detect)

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
    ev.set_defaults(func=run_evaluate)
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


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model name or config JSON")
    p.add_argument(
        "--pretrained", default=DEFAULT_PRETRAINED, help="tag, checkpoint file, or 'none'"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--batch-size", type=int, default=Runtime.batch_size)
    p.add_argument("--precision", default="fp32", choices=choices(Precision), help="CUDA only")
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
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--set {key}={raw}: not a valid {type(default).__name__}") from None
    return None if raw.lower() == "none" and default is None else raw


def tta_arg(args: argparse.Namespace) -> str:
    return "none" if args.no_tta else args.tta


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
                **run,
            }
        )
        self.tta = tta_arg(args)
        self.refs = refs_arg(args)
        self.seed = args.seed

    def detector(self, args: argparse.Namespace):
        """Load the model stack (the first import of torch) and build the Detector."""
        from .detector import Detector

        return Detector(args.model, args.pretrained, seed=self.seed, settings=self.settings,
                        runtime=self.runtime)  # fmt: skip


# ----------------------------------------------------------------------------- detect


def run_detect(args: argparse.Namespace) -> int:
    plan = Plan(args)
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
    model, pretrained = model_identity(args)
    finger = fingerprint(
        plan.settings, model=model, pretrained=pretrained, seed=plan.seed, object=args.object,
        mode=args.mode, refs=plan.refs, tta=plan.tta, max_map_side=args.max_map_side,
    )  # fmt: skip
    out = Path(args.out)
    check_output_folder(out, args.resume, args.overwrite, finger)

    from .outputs import ResultWriter  # the stack loads from here on

    det = plan.detector(args)
    names = output_names(paths)
    index_of = {str(p): i for i, p in enumerate(paths)}
    started = time.perf_counter()
    info = run_info(args, det, finger)
    with ResultWriter(out, resume=args.resume, overwrite=args.overwrite,
                      overlays=not args.no_overlay) as writer:  # fmt: skip
        writer.write_run_info(info)
        skip = [i for i, p in enumerate(paths) if str(p) in writer.finished]
        count, modes = 0, set()
        stream = det.iter_predict(
            list(index_of), args.object, plan.tta, mode=args.mode, refs=plan.refs,
            progress=True, skip=skip, max_map_side=args.max_map_side or None,
        )  # fmt: skip
        for item in stream:
            if hasattr(item, "reason"):
                writer.add_failure(item)
                _warn(f"cannot read {item.source}: {item.reason}")
                continue
            writer.add(item, names[index_of[item.source]], item.source)
            modes.add(item.mode)
            count += 1
        errors = writer.num_errors
        if modes:
            writer.write_run_info({**info, "modes_used": sorted(modes)})
    elapsed = time.perf_counter() - started
    print(
        f"anoclip: scored {count} image(s) in {elapsed:.1f} s"
        + (f", skipped {len(skip)} already done" if skip else "")
        + (f", {errors} unreadable (see {out / 'errors.csv'})" if errors else "")
        + f"; results in {out}",
        file=sys.stderr,
    )
    return 1 if errors else 0


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


def run_info(args: argparse.Namespace, det: Any, finger: dict) -> dict:
    return {
        "anoclip": __version__,
        "command": " ".join(sys.argv),
        "fingerprint": finger,
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


# ----------------------------------------------------------------------------- evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    plan = Plan(args, preset(args.preset, args.dataset) if args.preset else None)
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"--root {root}: no such folder")

    from .evaluate import EvalOptions, evaluate  # the stack loads from here on

    det = plan.detector(args)
    opts = EvalOptions(
        dataset=args.dataset, root=args.root, categories=args.categories, tta=plan.tta,
        mode=args.mode, refs=plan.refs, eval_size=args.eval_size, ap_mode=args.ap_mode,
        strict=not args.no_strict, limit=args.limit,
    )  # fmt: skip
    started = time.perf_counter()
    results = evaluate(det, opts, args.out, log=lambda m: print(f"anoclip: {m}", file=sys.stderr))
    print((Path(args.out) / "metrics.md").read_text())
    print(
        f"anoclip: evaluated {len(results)} categories in {time.perf_counter() - started:.0f} s;"
        f" tables in {args.out}",
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
