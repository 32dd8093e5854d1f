"""The argument groups the commands share, and how their text is read (no torch).

    add_model_args   --model --pretrained --device --batch-size --precision --view-engine
                     --seed --workers --set KEY=VALUE --debug
    add_mode_args    --mode --refs --tta --no-tta
    add_decision_args, add_visual_args   (detect; evaluate has its own visual flags)

``--set KEY=VALUE`` text is read by the field's annotation
(:func:`anoclip.settings.parse_setting`); every refusal is one
:class:`~anoclip.errors.UsageError` naming the option.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from anoclip.clip.prompts import prompt_name
from anoclip.errors import UsageError
from anoclip.settings import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Mode,
    Precision,
    Runtime,
    TTAKind,
    ViewEngine,
    choices,
    parse_setting,
    ref_count,
    split_overrides,
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


def add_mode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        default=None,
        choices=choices(Mode),
        help="anoclip: each image alone; dual: images in pairs, each the reference of the "
        "other; mutual: each image against --refs others (all inputs form one set). Default "
        "anoclip; with --normal and a visual backbone, and at least 10 inputs: mutual over "
        "all inputs with the known-good images as a bank",
    )
    p.add_argument("--refs", default=None,
                   help="mutual mode: references per image, k or 'all' (the 128 most similar; "
                        "--set refs_cap=0 for every other image)")  # fmt: skip
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


def read_set(pairs: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--set KEY=VALUE` texts -> (Settings fields, Runtime fields), each value read by its
    field's annotation; a refusal names the pair."""
    values: dict[str, Any] = {}
    for pair in pairs:
        try:
            key, value = parse_setting(pair)
        except UsageError as exc:
            raise type(exc)(f"--set {pair!r}: {exc}") from None
        values[key] = value
    return split_overrides(values)


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


def check_object(name: str) -> None:
    try:
        prompt_name(name)
    except ValueError as exc:
        raise UsageError(f"--object {name!r}: {exc}") from None
