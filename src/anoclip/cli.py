"""The `anoclip` command line: `anoclip detect` (and `anoclip evaluate`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, BackboneError, WeightsUnavailableError
from .images import expand_inputs, unique_stems
from .settings import Settings


class CliError(Exception):
    """A user error reported as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("anoclip: interrupted; finished results are kept", file=sys.stderr)
        return 130
    except (
        CliError,
        BackboneError,
        WeightsUnavailableError,
        FileNotFoundError,
        ValueError,
        RuntimeError,
    ) as exc:
        print(f"anoclip: error: {exc}", file=sys.stderr)
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
    det.add_argument("--no-overlay", action="store_true", help="write .npy maps only")
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
        choices=("anoclip", "dual", "mutual"),
        help="anoclip: each image alone; dual: images in pairs, each the reference of the "
        "other; mutual: each image against --refs others (all inputs form one set)",
    )
    p.add_argument("--refs", default=None, help="mutual mode: references per image, k or 'all'")
    p.add_argument(
        "--tta",
        default="noise",
        choices=("none", "noise", "synth", "both"),
        help="test-time adaptation: noise (AnoCLIP), synth (synthesized anomalies), both",
    )
    p.add_argument("--no-tta", action="store_true", help="same as --tta none")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="open_clip model name or config JSON")
    p.add_argument(
        "--pretrained", default=DEFAULT_PRETRAINED, help="tag, checkpoint file, or 'none'"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--batch-size", type=int, default=Settings.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="image decoding workers")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set temperature=0.07 --set adapter=linear",
    )


def parse_settings(pairs: Sequence[str], batch_size: int) -> Settings:
    """`KEY=VALUE` strings -> Settings (values parsed by the field's default type)."""
    defaults = Settings()
    values: dict[str, object] = {"batch_size": batch_size}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in Settings.names():
            raise CliError(f"--set {pair!r}: expected KEY=VALUE with KEY in {Settings.names()}")
        values[key] = _parse_value(raw.strip(), getattr(defaults, key), key)
    return dataclasses.replace(defaults, **values)


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
        raise CliError(f"--set {key}={raw}: not a valid {type(default).__name__}") from None
    return raw


def make_detector(args: argparse.Namespace, preset: dict | None = None):
    from .detector import Detector

    settings = parse_settings(args.set, args.batch_size)
    if preset:
        settings = dataclasses.replace(settings, **preset.get("settings", {}))
        args.seed = preset.get("seed", args.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        det = Detector(
            args.model, args.pretrained, args.device, args.seed, settings, num_workers=args.workers
        )
    for w in caught:
        print(f"anoclip: warning: {w.message}", file=sys.stderr)
    return det


def run_detect(args: argparse.Namespace) -> int:
    from .outputs import ResultWriter

    paths = expand_inputs(args.inputs)
    if not paths:
        raise CliError(f"no images found in {' '.join(args.inputs)}")
    names = unique_stems(paths)
    index_of = {str(p): i for i, p in enumerate(paths)}
    det = make_detector(args)
    started = time.perf_counter()
    with ResultWriter(args.out, resume=args.resume, overlays=not args.no_overlay) as writer:
        writer.write_run_info(run_info(args, det))
        skip = [i for i, p in enumerate(paths) if str(p) in writer.finished]
        count = 0
        stream = det.iter_predict(
            list(index_of), args.object, tta_arg(args), mode=args.mode, refs=refs_arg(args),
            progress=True, skip=skip,
        )  # fmt: skip
        for item in stream:
            if hasattr(item, "reason"):
                writer.add_failure(item)
                print(f"anoclip: cannot read {item.source}: {item.reason}", file=sys.stderr)
                continue
            writer.add(item, names[index_of[item.source]], item.source)
            count += 1
        errors = writer.num_errors
    elapsed = time.perf_counter() - started
    print(
        f"anoclip: scored {count} image(s) in {elapsed:.1f} s"
        + (f", skipped {len(skip)} already done" if skip else "")
        + (f", {errors} unreadable (see {Path(args.out) / 'errors.csv'})" if errors else "")
        + f"; results in {args.out}",
        file=sys.stderr,
    )
    return 1 if errors else 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import EvalOptions, evaluate, paper_preset

    preset = paper_preset(args.dataset) if args.preset == "paper" else None
    det = make_detector(args, preset)
    opts = EvalOptions(
        dataset=args.dataset,
        root=args.root,
        categories=args.categories,
        tta=tta_arg(args),
        mode=args.mode,
        refs=refs_arg(args),
        eval_size=args.eval_size,
        ap_mode=args.ap_mode,
        strict=not args.no_strict,
        limit=args.limit,
    )
    started = time.perf_counter()
    results = evaluate(det, opts, args.out, log=lambda m: print(f"anoclip: {m}", file=sys.stderr))
    print((Path(args.out) / "metrics.md").read_text())
    print(
        f"anoclip: evaluated {len(results)} categories in {time.perf_counter() - started:.0f} s;"
        f" tables in {args.out}",
        file=sys.stderr,
    )
    return 0


def tta_arg(args: argparse.Namespace) -> str:
    return "none" if args.no_tta else args.tta


def refs_arg(args: argparse.Namespace) -> int | str | None:
    if args.refs is None or args.refs == "all":
        return args.refs
    try:
        return int(args.refs)
    except ValueError:
        raise CliError(f"--refs {args.refs!r}: expected a positive integer or 'all'") from None


def run_info(args: argparse.Namespace, det) -> dict:
    return {
        "anoclip": __version__,
        "command": " ".join(sys.argv),
        "model": det.backbone.name,
        "pretrained": det.backbone.pretrained,
        "random_weights": det.backbone.random_weights,
        "device": str(det.device),
        "seed": det.seed,
        "object": getattr(args, "object", None),
        "tta": tta_arg(args),
        "mode": args.mode,
        "refs": args.refs,
        "settings": dataclasses.asdict(det.settings),
    }


if __name__ == "__main__":
    sys.exit(main())
