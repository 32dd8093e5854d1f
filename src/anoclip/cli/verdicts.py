"""The ok / defect decisions of `anoclip detect`: where the threshold comes from, settled
before the stack loads, and how a run closes (summary line, report).

    --normal DIR      calibrate on known-good images scored in the run's mode and settings
                      (in dual/mutual mode as their own set, leave-one-out) -> threshold.json
    --threshold FILE  reuse a threshold.json whose settings fingerprint matches
    neither           the unsupervised rule decides once every image is scored

A resumed folder keeps its own calibrated threshold.json unless told otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anoclip.cli.arguments import false_reject_arg
from anoclip.cli.messages import warn
from anoclip.cli.plan import Plan
from anoclip.data.listing import expand_inputs
from anoclip.errors import ThresholdFileError, UsageError
from anoclip.settings import differing_fields

THRESHOLD_FILE = "threshold.json"


@dataclasses.dataclass
class Decisions:
    """Where `anoclip detect` gets its ok / defect threshold, settled before the stack loads.

    source: "normal" (calibrate on `normals`), "file" (--threshold), "folder" (a resumed
    folder's own calibrated threshold.json) or "unsupervised" (decided at the end; with
    `bank_normals` known-good images as the set's bank, :func:`~anoclip.cli.plan.default_mode`).
    threshold: the :class:`~anoclip.decide.calibrate.Threshold` when known before scoring.
    """

    source: str = "unsupervised"
    normals: list[Path] = dataclasses.field(default_factory=list)
    false_reject: float | None = None
    threshold: Any = None
    file: Path | None = None
    bank_normals: int = 0

    def describe(self) -> dict[str, Any]:
        """For run.json."""
        out: dict[str, Any] = {"threshold": self.source}
        if self.normals:
            out.update(normals=len(self.normals), false_reject=self.false_reject)
        if self.bank_normals:
            out["normals_as_bank"] = self.bank_normals
        if self.file is not None:
            out["threshold_file"] = str(self.file.resolve())
        return out


def threshold_id(finger: dict) -> dict:
    """The fingerprint a threshold is calibrated under: the run's, less what only shapes
    the written files (--max-map-side) or runs the same scores (an --engine file's
    metadata), so a threshold.json is reusable across them — and between an exported file
    and PyTorch with the settings it was exported with (``--tta none``, its image score)."""
    return {k: v for k, v in finger.items() if k not in ("max_map_side", "engine")}


def plan_decisions(
    args: argparse.Namespace, thr_id: dict, normals_as_bank: bool = False
) -> Decisions:
    """--normal / --false-reject / --threshold -> Decisions (validated, no torch);
    `normals_as_bank`: the --normal images are the set's bank, the set decides."""
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
    if normals_as_bank:
        if args.false_reject is not None:
            raise UsageError("--false-reject needs --mode anoclip here: the --normal images "
                             "are the set's bank and the set's own bounds decide")  # fmt: skip
        return Decisions(bank_normals=len(normals))
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
        warn(
            "fusion=batch_z normalises over the set, so the known-good images (scored as "
            "their own set) and the inputs are on different scales; prefer fusion=linear"
        )
    print(f"anoclip: calibrating on {len(decisions.normals)} known-good image(s)", file=sys.stderr)
    threshold = det.calibrate(
        [str(p) for p in decisions.normals], args.object, decisions.false_reject, plan.tta,
        mode=args.mode, refs=plan.refs, settings_id=thr_id, progress=True, bank=bank,
        normals_are_bank=plan.bank.from_normals,
    )  # fmt: skip
    inputs = {**threshold.inputs, "normal_inputs": [str(Path(d).resolve()) for d in args.normal]}
    return dataclasses.replace(threshold, inputs=inputs)


def decision_summary(rows: Sequence[dict], threshold: Any) -> str:
    """'3 defect, 2 review, 9 ok (defect above 0.51, review above 0.44, normal: ...)'."""
    if threshold is None:
        return "no decisions"
    count = {d: sum(r["decision"] == d for r in rows) for d in ("defect", "review", "ok")}
    how = threshold.method
    if not threshold.unsupervised:
        n, alpha = threshold.inputs.get("n_normal"), threshold.inputs.get("false_reject")
        how += f" from {n} known-good images, target false-reject rate {alpha}"
    bounds = f"defect above {threshold.image_threshold:.3g}"
    if threshold.review_threshold is not None:
        bounds += f", review above {threshold.review_threshold:.3g}"
    counts = ", ".join(f"{v} {k}" for k, v in count.items())
    return f"{counts} ({bounds}, {how})"


def print_done(
    out: Path,
    counts: tuple[int, int, int],
    elapsed: float,
    rows: Sequence[dict],
    final: Any,
    page: Path | None,
    *,
    banked: bool = False,
) -> None:
    """The closing log line of `anoclip detect`; counts: (scored, skipped, unreadable);
    `banked`: the --normal images were the set's bank (their advice is then --mode anoclip)."""
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
        how = (
            "--mode anoclip, which calibrates on the --normal images"
            if banked
            else "--mode anoclip --normal DIR of known-good images"
        )
        warn(
            f"decisions come from the set itself (the mode of these {len(rows)} scores and "
            "their spread below it): no false-reject guarantee, and it assumes most images "
            f"are good; look at the 'review' band (for a controlled false-reject rate: {how})"
        )


def doubts(noted: Mapping[str, Sequence[str]], scored: int) -> dict:
    """run.json's record of doubtful scores (`noted`: source -> notes, of `scored` images):
    "unfamiliar" (unlike the bank's known-good images), "global_change" (the whole image
    differs from the normal ones) and "near_identical" (the series screen's images and
    verdict, when any was noted)."""
    from anoclip.notes import GLOBAL_CHANGE, NEAR_IDENTICAL, UNFAMILIAR, series_summary

    out: dict[str, Any] = {}
    odd = [s for s, n in noted.items() if UNFAMILIAR in n]
    if odd:
        out["unfamiliar"] = odd
    changed = [s for s, n in noted.items() if GLOBAL_CHANGE in n]
    if changed:
        out["global_change"] = changed
    if any(NEAR_IDENTICAL in n for n in noted.values()):
        out["near_identical"] = series_summary(noted, scored)
    return out


def write_detect_report(
    out: Path,
    rows: Sequence[dict],
    threshold: Any,
    info: dict,
    args: argparse.Namespace,
    noted: Mapping[str, Sequence[str]] | None = None,
) -> Path | None:
    """OUT/report.html over all rows of the folder, maps on the threshold's scale (that of
    maps/NAME.png), the known-good scores in the histogram, the settings the run used."""
    if not rows:
        return None
    from anoclip.results.overlays import calibrated_scale
    from anoclip.results.report import write_report
    from anoclip.results.writer import report_rows

    keys = ("anoclip", "object", "model", "pretrained", "random_weights", "seed", "mode", "refs",
            "tta", "decisions", "settings")  # fmt: skip
    shown = {k: info[k] for k in keys if k in info}
    title = f"anoclip detect: {args.object}" + (
        " (RANDOM weights: scores meaningless)" if info.get("random_weights") else ""
    )
    report = report_rows(out, rows)
    noted = noted or {}
    report = [dataclasses.replace(r, notes=tuple(noted[r.source])) if r.source in noted else r
              for r in report]  # fmt: skip
    normals = None if threshold is None else threshold.inputs.get("normal_scores")
    return write_report(out, report, threshold, shown, title,
                        scale=calibrated_scale(threshold), normal_scores=normals,
                        settings_shown=[*keys[:-1], *used_settings(info)])  # fmt: skip


# the settings a report shows for each scorer, besides those that differ from the defaults
TOKEN_SETTINGS = ("temperature", "layers", "image_score", "tta_steps", "fusion")
PATCH_SETTINGS = ("visual_backbone", "fusion", "visual_strides", "patch_radii", "patch_grid",
                  "rscin", "duplicate_threshold")  # fmt: skip


def used_settings(info: dict) -> list[str]:
    """ "settings.KEY" for the fields that shape this run: the scorer's main ones and every
    one that differs from the defaults."""
    from anoclip.settings import Settings

    values = info.get("settings") or {}
    plain = dataclasses.asdict(Settings())
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    main = PATCH_SETTINGS if s.patch_scorer else TOKEN_SETTINGS
    changed = [k for k, v in values.items() if k in plain and _same(v) != _same(plain[k])]
    return [f"settings.{k}" for k in dict.fromkeys([*main, *changed])]


def _same(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
