"""Testing hooks: run pipeline steps with fixed TTA draws, outside the public facade.

Parity tests replay the official code's adapter initialisation and noise
(:class:`~anoclip.clip.tta.TTAOverrides`) through the production encode and scoring steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from anoclip.clip.text import TextBank
from anoclip.clip.tta import TTAOverrides
from anoclip.detector import Detector
from anoclip.records import Sample, Scored
from anoclip.references.token_scorer import ScoringContext, score_each


def run_batch(
    detector: Detector,
    samples: Sequence[Sample],
    bank: TextBank,
    tta: bool | str = True,
    overrides: TTAOverrides | None = None,
) -> list[Scored]:
    """AnoCLIP scores and model-resolution maps of preprocessed `samples`, each image
    alone, with the TTA draws of `overrides` (weights `[E, O, C]`, noise) when given."""
    features = detector.encode(samples, bank, tta, overrides=overrides)
    context = ScoringContext(detector.settings, detector.image_size, detector.seed)
    return score_each(samples, features, context)
