"""The records that flow along the data path, and out of it.

    inputs -> Sample (tiles `[T, 3, S, S]`) -> Features (per tile) -> Scored (per image,
    model resolution) -> Prediction (per image, the image's own size) | Failure

Writing outputs and evaluating import these records only, never the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from anoclip.threshold import Decision, Threshold, decide, defect_mask
from anoclip.threshold import ratio as score_ratio


@dataclass(frozen=True)
class Layout:
    """How one image became T square tiles of side `tile`.

    `size` is the (H', W') "model resolution" the maps are produced at; `offsets` are the
    tiles' starts along `axis` (0: rows, 1: columns).
    """

    size: tuple[int, int]
    tile: int
    axis: int = 1
    offsets: tuple[int, ...] = (0,)

    @property
    def num_tiles(self) -> int:
        return len(self.offsets)


@dataclass
class Prediction:
    """The result for one image.

    score: image-level anomaly score (probability of "abnormal", in [0, 1]).
    anomaly_map: `[H, W]` float32 per-pixel anomaly probability at the image's own size.
    source: the path as given, or the index of an in-memory image.
    mode: the mode that scored it ("anoclip" when a set mode fell back to single images).
    image_size: (H, W) of the image; the map is smaller when its size was capped.
    decision: "ok", "review" or "defect" once a threshold was applied (else None): defect ⟺
        score > t_d, review ⟺ t_r < score ≤ t_d (:mod:`anoclip.threshold`).
    ratio: score / t_d (> 1 means defect; NaN when t_d ≤ 0), with the decision.
    threshold: the applied :class:`~anoclip.threshold.Threshold` (or plain float t).
    notes: what makes the score doubtful: "unfamiliar" (the image does not look like the
        known-good images, :mod:`anoclip.references.familiarity`), "near_identical" (the set
        holds near-identical images of it, skipped as references where they would dominate,
        :mod:`anoclip.references.series`), "global_change" (the whole image differs from
        what is normal and its global term raised its score, the map staying patch-level,
        :mod:`anoclip.references.global_score`).
    """

    source: str
    score: float
    anomaly_map: np.ndarray
    mode: str = "anoclip"
    image_size: tuple[int, int] | None = None
    decision: Decision | None = None
    ratio: float | None = None
    threshold: Threshold | float | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()

    def decided(self, threshold: Threshold | float) -> Prediction:
        """A copy with `decision`, `ratio` and `threshold` filled from `threshold`."""
        return replace(self, decision=decide(self.score, threshold),
                       ratio=score_ratio(self.score, threshold), threshold=threshold)  # fmt: skip

    @property
    def unsupervised(self) -> bool:
        """True when the decision comes from an unsupervised (set-based) threshold."""
        return isinstance(self.threshold, Threshold) and self.threshold.unsupervised

    def defect_mask(self) -> np.ndarray | None:
        """`[h, w]` bool defect mask (:func:`anoclip.threshold.defect_mask`; None without a
        pixel threshold): a review / defect image's mask is never empty."""
        return defect_mask(self.anomaly_map, self.decision, self.threshold)


@dataclass
class Failure:
    """An input that could not be scored (e.g. undecodable file) and why."""

    source: str
    reason: str


@dataclass
class Sample:
    """A preprocessed image: tiles `[T, 3, S, S]`, their layout and the original size;
    `visual`: the second input `[3, S_v, S_v]` of a separate visual backbone, or None."""

    index: int
    source: str
    tiles: torch.Tensor
    layout: Layout
    size: tuple[int, int]
    visual: torch.Tensor | None = None

    def pin_memory(self) -> Sample:
        """Called by the DataLoader (pin_memory=True on CUDA) for faster transfers."""
        self.tiles = self.tiles.pin_memory()
        if self.visual is not None:
            self.visual = self.visual.pin_memory()
        return self


@dataclass
class Features:
    """Encoder and text-branch outputs for T tiles with an h×w patch grid (L = h·w).

    text_cos: `[T, nL, L, 2]` cosines of the (adapted) patch tokens with F, per layer.
    cls_cos: `[T, V, 2]` cosines of the CLS of each view (V = 22 or 1).
    cls: `[T, C]` identity-view CLS embeddings (for choosing references).
    ref_tokens: `[T, nR, L, C]` L2-normalised frozen tokens of the visual branch, or None.
    """

    text_cos: torch.Tensor
    cls_cos: torch.Tensor
    cls: torch.Tensor
    grid: tuple[int, int]
    ref_tokens: torch.Tensor | None = None

    @staticmethod
    def cat(parts: Sequence[Features]) -> Features:
        """The features of several batches as one record (tiles concatenated in order)."""
        tokens = [p.ref_tokens for p in parts]
        return Features(
            text_cos=torch.cat([p.text_cos for p in parts]),
            cls_cos=torch.cat([p.cls_cos for p in parts]),
            cls=torch.cat([p.cls for p in parts]),
            grid=parts[0].grid,
            ref_tokens=None if any(t is None for t in tokens) else torch.cat(tokens),
        )


@dataclass
class Scored:
    """One image scored by a mode: its sample, image score, map `[H', W']` at model
    resolution (stitched from its tiles), and the mode that scored it."""

    sample: Sample
    score: float
    map: torch.Tensor
    mode: str = "anoclip"
    notes: tuple[str, ...] = ()  # what makes the score doubtful, e.g. "unfamiliar"
