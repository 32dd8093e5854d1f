"""What the scoring loop asks of a scorer: one contract, several peers.

The loop (:func:`anoclip.pipeline.score_batches`) reads batches once and hands each scorer
the same calls; a scorer's features `F` are whatever it computes per batch:

    for each batch:  feats = scorer.features(samples)                      F
        alone:       scorer.score_each(samples, feats)      -> one Scored per image, now
        in a set:    part = scorer.keep(samples, feats, n)  (CPU, storage dtype; n images)
    after the set:   scorer.score_set(samples, scorer.cat(parts)) -> one Scored per image

Peers: :class:`~anoclip.references.token_scorer.TokenScorer` (the CLIP token path, F =
:class:`~anoclip.records.Features`) and :class:`~anoclip.references.patch_scorer.PatchScorer`
(patch features of any backbone, F = :class:`~anoclip.references.patch_scorer.PatchFeatures`).
A new scorer (another backbone, a streaming memory) implements these five methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from anoclip.records import Sample, Scored

F = TypeVar("F")
Tick = Callable[[float], None]  # progress: x more images' worth of work done


class Scorer(Protocol[F]):
    """A scoring method: a batch's features, scored alone or kept and scored as one set."""

    def features(self, samples: Sequence[Sample]) -> F:
        """The features of a batch of (at least one) samples."""
        ...

    def score_each(self, samples: Sequence[Sample], feats: F) -> list[Scored]:
        """Every image scored alone, in order."""
        ...

    def keep(self, samples: Sequence[Sample], feats: F, set_size: int) -> F:
        """A batch's features as a set of `set_size` images keeps them until it is encoded."""
        ...

    def cat(self, parts: Sequence[F]) -> F:
        """Kept batches as one set (images concatenated in order)."""
        ...

    def score_set(
        self, samples: Sequence[Sample], feats: F, tick: Tick | None = None
    ) -> list[Scored]:
        """The images as one unlabeled set, each against the others, in order; `tick(x)`
        reports x more images' worth of the work done (progress with an ETA)."""
        ...
