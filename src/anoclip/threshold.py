"""The decision rule a run applies: :class:`Threshold` (threshold.json) and the decision
of one score against it, with a review band between "clearly normal" and "defect":

    decision = "defect"  if score > t_d
               "review"  if t_r < score ≤ t_d      (t_r ≤ t_d; no band when t_r is None)
               "ok"      otherwise                 ratio = score / t_d

    mask     = map > t_px_r   for "review" / "defect" (never empty: else the image's own hot
                              spot, map ≥ m + 0.7·(max map − m), m its median)
               map > t_px_d   for "ok"

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

import numpy as np

from anoclip.errors import CalibrationError, ThresholdFileError

METHODS = ("normal", "unsupervised")
FILE_FORMAT = "anoclip-threshold"
FILE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no review band
Decision = Literal["ok", "review", "defect"]
DECISIONS: tuple[Decision, ...] = ("ok", "review", "defect")
MASK_FALLBACK = 0.7  # a flagged image with no pixel over t_px_r: 0.7 of its rise above its median


@dataclass(frozen=True)
class Threshold:
    """A calibrated decision rule (module doc): defect ⟺ score > image_threshold (t_d),
    review ⟺ review_threshold (t_r) < score ≤ t_d.

    method: "normal" (from known-good images) or "unsupervised" (from the unlabeled set).
    pixel_threshold / pixel_review: the pixel bounds t_px_d ≥ t_px_r of the masks;
    pixel_typical: a normal image's typical map maximum (the colour scale's quiet end).
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
    review_threshold: float | None = None
    pixel_review: float | None = None
    pixel_typical: float | None = None

    def __post_init__(self) -> None:
        for low, high in ((self.review_threshold, self.image_threshold),
                          (self.pixel_review, self.pixel_threshold)):  # fmt: skip
            if low is not None and high is not None and low > high:
                raise CalibrationError(f"review bound {low:g} above the defect bound {high:g}")

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
            "review_threshold": self.review_threshold,
            "pixel_review": self.pixel_review,
            "pixel_typical": self.pixel_typical,
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
    """ "defect" if score > t_d, "review" if score > t_r, else "ok" (a score equal to a
    bound is on its lower side; a float t has no review band)."""
    if not math.isfinite(score):
        raise CalibrationError(f"cannot decide on a non-finite score ({score})")
    if score > image_level(threshold):
        return "defect"
    t_r = getattr(threshold, "review_threshold", None)
    return "review" if t_r is not None and score > t_r else "ok"


def defect_mask(
    anomaly_map: np.ndarray, decision: Decision | None, threshold: object
) -> np.ndarray | None:
    """`[h, w]` bool mask (module doc), or None without a pixel bound. A flagged image's
    mask is never empty: it marks at least the pixels that drove its score."""
    t_d = getattr(threshold, "pixel_threshold", None)
    if t_d is None:
        return None
    t_r = getattr(threshold, "pixel_review", None)
    if decision in ("review", "defect"):
        mask = anomaly_map > (t_d if t_r is None else t_r)
        if not mask.any():  # the image's own hot spot: above its median by 0.7 of the rise
            base = float(np.median(anomaly_map))
            mask = anomaly_map >= base + MASK_FALLBACK * (float(anomaly_map.max()) - base)
        return mask
    return anomaly_map > t_d


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
    if data.get("format_version") not in READABLE_VERSIONS:
        raise bad(f"format_version {data.get('format_version')!r}, expected {FILE_VERSION}")
    if data.get("method") not in METHODS:
        raise bad(f"method {data.get('method')!r} is not one of {', '.join(METHODS)}")
    t_img = _finite_number(data.get("image_threshold"))
    if t_img is None:
        raise bad("image_threshold is not a finite number")
    bounds = {}
    for key in ("pixel_threshold", "review_threshold", "pixel_review", "pixel_typical"):
        value = data.get(key)
        if value is not None and (value := _finite_number(value)) is None:
            raise bad(f"{key} is not a finite number or null")
        bounds[key] = value
    inputs, settings = data.get("inputs", {}), data.get("settings", {})
    if not isinstance(inputs, dict) or not isinstance(settings, dict):
        raise bad("inputs and settings must be objects")
    version = data.get("anoclip_version", "")
    try:
        return Threshold(data["method"], t_img, inputs=inputs, anoclip_version=str(version),
                         settings=settings, **bounds)  # fmt: skip
    except CalibrationError as e:
        raise bad(str(e)) from None


def _finite_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
