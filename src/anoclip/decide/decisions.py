"""Decisions from scores: thresholds from known-good images, or from the set itself.

    defect ⟺ score > t            mask ⟺ map > t_px

:func:`threshold_from` turns the scored known-good images (a :class:`Scored` stream, maps
at model resolution) into a :class:`~anoclip.threshold.Threshold`; :func:`decide_all`
fills ``Prediction.decision`` / ``ratio`` for a finished set (the unsupervised rule needs
the whole set). The estimators are in :mod:`anoclip.decide.calibrate`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from anoclip.data.images import ImageInput
from anoclip.data.listing import expand_inputs
from anoclip.data.loading import as_list
from anoclip.decide.calibrate import (
    MIN_NORMALS,
    calibrate_normal,
    calibrate_unsupervised,
    per_image_statistic,
)
from anoclip.decide.unlabeled import DEFECT_K
from anoclip.errors import CalibrationError, ImageDecodeError, UsageError
from anoclip.records import Failure, Prediction, Scored
from anoclip.threshold import Threshold


def normal_items(normals: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """Known-good images as given, or the image files of one folder (recursively)."""
    if isinstance(normals, (str, Path)) and Path(normals).is_dir():
        return [str(x) for x in expand_inputs([normals])]
    return as_list(normals)


def check_calibration(count: int, false_reject: float, confidence: float) -> None:
    """Fail before any scoring: too few normals, or levels outside (0, 1)."""
    if count < MIN_NORMALS:
        raise CalibrationError(
            f"need at least {MIN_NORMALS} known-good images to set a threshold, got {count}"
        )
    for name, value in (("false-reject rate", false_reject), ("confidence", confidence)):
        if not 0.0 < float(value) < 1.0:
            raise CalibrationError(f"{name} must be in (0, 1), got {value}")


def threshold_from(
    scored: Iterable[Scored | Failure],
    *,
    false_reject: float,
    confidence: float,
    pixel_quantile: float,
    leave_one_out: bool,
    settings: Mapping[str, Any],
) -> Threshold:
    """A Threshold from scored known-good images:

        t    = γ upper bound of the (1 − α) quantile of the n normal scores
        t_px = the same bound over sᵢ = Q_q(mapᵢ), maps at model resolution

    Each map is reduced to its statistic as it arrives (memory O(n), not O(n·H·W)).
    Raises ImageDecodeError naming an unreadable normal."""
    scores, stats = [], []
    for item in scored:
        if isinstance(item, Failure):
            raise ImageDecodeError(f"known-good image {item.source}: {item.reason}")
        scores.append(item.score)
        stats.append(per_image_statistic([item.map.clamp(0.0, 1.0).numpy()], pixel_quantile))
    return calibrate_normal(
        scores, [s.reshape(1, 1) for s in stats], false_reject=false_reject,
        confidence=confidence, pixel_quantile=pixel_quantile, leave_one_out=leave_one_out,
        settings=settings,
    )  # fmt: skip


def decide_all(
    predictions: Sequence[Prediction],
    threshold: Threshold | float | Literal["unsupervised"],
    *,
    k: float = DEFECT_K,
    settings_id: Mapping[str, Any] | None = None,
) -> list[Prediction]:
    """`predictions` with `decision` / `ratio` filled (copies, same order).

    threshold: a Threshold or float t ("defect" ⟺ score > t), or "unsupervised": the review
    and defect bounds c + 1.75σ_L, c + k·σ_L of these predictions' scores and the same rule
    over the per-image map maxima (:mod:`anoclip.decide.unlabeled`; needs ≥ 3 predictions;
    the result is flagged unsupervised).
    """
    if isinstance(threshold, str):
        if threshold != "unsupervised":
            raise UsageError(f"threshold {threshold!r}: expected a Threshold, a float or "
                             "'unsupervised'")  # fmt: skip
        threshold = calibrate_unsupervised(
            [p.score for p in predictions], [p.anomaly_map for p in predictions], k=k,
            settings=settings_id,
        )  # fmt: skip
    return [p.decided(threshold) for p in predictions]
