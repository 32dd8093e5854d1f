"""The decision rule a run applies: :class:`Threshold` (threshold.json) and the decision
of one score against it.

    decision = "defect" ⟺ score > t,   ratio = score / t

How thresholds are estimated is :mod:`anoclip.decide.calibrate`; this module is the record
they produce, so the records, writers and reports read it without the estimators.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from anoclip.errors import CalibrationError, ThresholdFileError

METHODS = ("normal", "unsupervised")
FILE_FORMAT = "anoclip-threshold"
FILE_VERSION = 1
Decision = Literal["ok", "defect"]


@dataclass(frozen=True)
class Threshold:
    """A calibrated decision rule: defect ⟺ score > image_threshold.

    method: "normal" (from known-good images) or "unsupervised" (from the unlabeled set).
    inputs: how it was obtained (counts, target FRR, confidence, per-image quantile, ...).
    settings: the caller's fingerprint of everything that changes scores (model, weights,
    mode, TTA, seed, ...); a file is only reused with equal settings.
    """

    method: str
    image_threshold: float
    pixel_threshold: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    anoclip_version: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def unsupervised(self) -> bool:
        return self.method == "unsupervised"

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": FILE_FORMAT,
            "format_version": FILE_VERSION,
            "method": self.method,
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold,
            "inputs": self.inputs,
            "anoclip_version": self.anoclip_version,
            "settings": self.settings,
        }

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write the threshold as JSON (atomically); returns the path."""
        path = Path(path)
        text = json.dumps(self.as_dict(), indent=2, sort_keys=True, allow_nan=False)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(
        cls, path: str | os.PathLike, settings: Mapping[str, Any] | None = None
    ) -> Threshold:
        """Read a threshold file; with `settings`, also require equal settings."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise ThresholdFileError(f"{path}: cannot read threshold file ({reason})") from e
        threshold = _threshold_from_dict(data, path)
        if settings is not None:
            threshold.check_settings(settings, path)
        return threshold

    def check_settings(self, settings: Mapping[str, Any], path: object = "threshold") -> None:
        """Raise ThresholdFileError if `settings` differ from the ones calibrated with."""
        want, have = _jsonable(dict(settings)), _jsonable(self.settings)
        if want != have:
            keys = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            shown = ", ".join(f"{k}={have.get(k)!r} (now {want.get(k)!r})" for k in keys[:3]) + (
                " ..." if len(keys) > 3 else ""
            )
            raise ThresholdFileError(
                f"{path}: calibrated with other settings: {shown}; recalibrate with --normal"
            )


def image_level(threshold: float | Threshold) -> float:
    return threshold.image_threshold if isinstance(threshold, Threshold) else float(threshold)


def decide(score: float, threshold: float | Threshold) -> Decision:
    """ "defect" if score > t, else "ok" (a score equal to the threshold is ok)."""
    if not math.isfinite(score):
        raise CalibrationError(f"cannot decide on a non-finite score ({score})")
    return "defect" if score > image_level(threshold) else "ok"


def ratio(score: float, threshold: float | Threshold) -> float:
    """score / t (> 1 means defect); NaN when t ≤ 0, where the ratio means nothing."""
    t = image_level(threshold)
    return float(score) / t if t > 0 else math.nan


def _jsonable(value: Any) -> Any:
    """`value` after a JSON round trip (tuples become lists, keys strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def anoclip_version() -> str:
    try:
        from importlib.metadata import version

        return version("anoclip")
    except Exception:  # not installed (source tree on sys.path)
        return "unknown"


def _threshold_from_dict(data: Any, path: Path) -> Threshold:
    def bad(why: str) -> ThresholdFileError:
        return ThresholdFileError(f"{path}: not a valid anoclip threshold file ({why})")

    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise bad(f'no "format": "{FILE_FORMAT}"')
    if data.get("format_version") != FILE_VERSION:
        raise bad(f"format_version {data.get('format_version')!r}, expected {FILE_VERSION}")
    if data.get("method") not in METHODS:
        raise bad(f"method {data.get('method')!r} is not one of {', '.join(METHODS)}")
    t_img = _finite_number(data.get("image_threshold"))
    if t_img is None:
        raise bad("image_threshold is not a finite number")
    t_px = data.get("pixel_threshold")
    if t_px is not None and (t_px := _finite_number(t_px)) is None:
        raise bad("pixel_threshold is not a finite number or null")
    inputs, settings = data.get("inputs", {}), data.get("settings", {})
    if not isinstance(inputs, dict) or not isinstance(settings, dict):
        raise bad("inputs and settings must be objects")
    version = data.get("anoclip_version", "")
    return Threshold(data["method"], t_img, t_px, inputs, str(version), settings)


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
