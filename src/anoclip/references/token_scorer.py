"""The scoring modes: each image alone, or the images of a set as each other's references.

Both scorers have one signature and one result, a :class:`~anoclip.records.Scored` per
image (score and map at model resolution), in input order:

    score_each(samples, features, context)  AnoCLIP (METHOD.md §2.4): text branch only
    score_set(samples, features, context)   Dual-Image / mutual (§3, [DESIGN]):
        1. references per tile by CLS similarity (:mod:`anoclip.references.distances`);
        2. visual map: nearest-neighbour patch distance to the references, aggregated;
        3. fusion with the text branch at `fusion_temperature` (:mod:`anoclip.references.fusion`).

:class:`TokenScorer` is this path as a :class:`~anoclip.references.scorer.Scorer`: a batch's
:class:`~anoclip.records.Features` come from the pipeline's encoder; a set keeps them
(:func:`kept`) on the CPU, visual tokens in float16 when the set would exceed
:data:`FLOAT16_ABOVE_BYTES` as float32. Maps are built image by image, so memory beyond the
stored tokens stays small; batch_z fusion first accumulates its statistics over the whole set.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anoclip.clip.scoring import gaussian_blur, image_scores, probs_from_cosines, tile_maps
from anoclip.data.preprocess import stitch
from anoclip.errors import AnoclipWarning
from anoclip.records import Features, Sample, Scored
from anoclip.references.distances import nn_distances, reference_sets, text_keep_mask
from anoclip.references.fusion import RunningMoments, fuse_maps, fuse_scores
from anoclip.references.scorer import Tick
from anoclip.settings import RefCount, Settings

# Visual-branch tokens of a whole set above this many bytes (as float32) are kept in float16.
FLOAT16_ABOVE_BYTES = 2 * 2**30


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer needs besides the features: the settings, the tile size S, the seed
    (random pairing), references per image (set modes) and the device for similarities."""

    settings: Settings
    tile: int
    seed: int = 0
    refs: RefCount = "all"
    device: torch.device | None = None


class TokenScorer:
    """The CLIP token path (module doc) for the scoring loop: `encode` gives a batch's
    features (text branch, with the visual tokens `[T, nR, L, C]` when scoring a set)."""

    def __init__(
        self, encode: Callable[[Sequence[Sample]], Features], context: ScoringContext
    ) -> None:
        self.encode, self.context = encode, context

    def features(self, samples: Sequence[Sample]) -> Features:
        return self.encode(samples)

    def score_each(self, samples: Sequence[Sample], feats: Features) -> list[Scored]:
        return score_each(samples, feats, self.context)

    def keep(self, samples: Sequence[Sample], feats: Features, set_size: int) -> Features:
        return kept(feats, set_size, samples)

    def cat(self, parts: Sequence[Features]) -> Features:
        return Features.cat(parts)

    def score_set(
        self, samples: Sequence[Sample], feats: Features, tick: Tick | None = None
    ) -> list[Scored]:
        return score_set(samples, feats, self.context, tick)


def score_each(
    samples: Sequence[Sample], features: Features, context: ScoringContext
) -> list[Scored]:
    """AnoCLIP: every image scored alone from its text cosines (maps stitched per image)."""
    s = context.settings
    counts = [smp.layout.num_tiles for smp in samples]
    with torch.inference_mode():
        maps = tile_maps(features.text_cos, features.grid, context.tile, s.temperature,
                         s.gaussian_sigma)  # fmt: skip
        scores = image_scores(features.cls_cos, s.temperature, counts).cpu()
        return [
            Scored(smp, float(score), stitch(m, smp.layout).float().cpu())
            for smp, score, m in zip(samples, scores, maps.split(counts))
        ]


def score_set(
    samples: Sequence[Sample],
    features: Features,
    context: ScoringContext,
    tick: Tick | None = None,
) -> list[Scored]:
    """The images as one unlabeled set: text branch fused with the visual references.

    Fewer than two images fall back to :func:`score_each` (with a warning); the results
    then say mode "anoclip".
    """
    if len(samples) < 2:
        warnings.warn(
            "dual/mutual mode needs at least two images; scoring the single image in anoclip mode",
            AnoclipWarning,
            stacklevel=2,
        )
        return score_each(samples, features, context)
    if context.refs != "all" and int(context.refs) > len(samples) - 1:
        warnings.warn(
            f"refs={context.refs} is more than the {len(samples) - 1} other images of the set; "
            f"each image is scored against all {len(samples) - 1}",
            AnoclipWarning,
            stacklevel=2,
        )
    s = context.settings
    tau = s.fusion_temperature
    counts = [smp.layout.num_tiles for smp in samples]
    vis = visual_scores(features, counts, context, tick)
    bounds = torch.tensor([0, *counts]).cumsum(0).tolist()

    def maps_of(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        tiles = slice(bounds[i], bounds[i + 1])
        text = tile_maps(features.text_cos[tiles], features.grid, context.tile, tau,
                         s.gaussian_sigma)  # fmt: skip
        visual = _upsample(vis[tiles], features.grid, context.tile)
        return text, gaussian_blur(visual, s.gaussian_sigma)

    stats = None
    if s.fusion == "batch_z":  # statistics over every pixel of the set (label-free)
        text_m, vis_m = RunningMoments(), RunningMoments()
        for i in range(len(samples)):
            text, visual = maps_of(i)
            text_m.add(text)
            vis_m.add(visual)
        stats = (text_m.result(), vis_m.result())

    maps, vis_max = [], []
    for i, smp in enumerate(samples):
        text, visual = maps_of(i)
        fused = fuse_maps(text, visual, s.fusion, s.fusion_alpha, stats)
        maps.append(stitch(fused, smp.layout).float().cpu().clamp(0.0, 1.0))
        vis_max.append(stitch(visual, smp.layout).max())
    text_scores = image_scores(features.cls_cos, tau, counts)
    scores = fuse_scores(text_scores, torch.stack(vis_max), s.fusion, s.fusion_beta)
    mode = "dual" if context.refs == 1 else "mutual"
    return [
        Scored(smp, float(score), m, mode) for smp, score, m in zip(samples, scores.tolist(), maps)
    ]


def visual_scores(
    features: Features,
    counts: Sequence[int],
    context: ScoringContext,
    tick: Tick | None = None,
) -> torch.Tensor:
    """Visual anomaly score per tile and patch `[T, L]` (distances averaged over layers);
    the text cosines feed the text filter. `tick` advances by one per image (progress)."""
    s = context.settings
    tokens = features.ref_tokens  # [T, nR, L, C], float16 if large
    groups = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    refs = reference_sets(
        features.cls, groups, context.refs, s.pairing, torch.Generator().manual_seed(context.seed)
    )
    keep = None
    if s.ref_filter == "text":
        patch_probs = probs_from_cosines(features.text_cos, s.fusion_temperature).mean(dim=1)
        keep = text_keep_mask(patch_probs, s.ref_filter_quantile)
    layers = tokens.shape[1]
    per_tile = len(counts) / (layers * tokens.shape[0])  # images per tile and layer
    step = None if tick is None else (lambda k: tick(k * per_tile))
    per_layer = [
        nn_distances(tokens[:, r], refs, s.ref_agg, keep, device=context.device, tick=step)
        for r in range(layers)
    ]
    return torch.stack(per_layer).mean(dim=0)


def kept(features: Features, set_size: int, samples: Sequence[Sample]) -> Features:
    """A batch's features as a set of `set_size` images keeps them: on the CPU, the visual
    tokens (when there are) in their storage dtype."""
    tokens = features.ref_tokens
    if tokens is not None:
        tokens = storage_dtype(tokens.cpu(), set_size, samples)
    f = features
    return Features(f.text_cos.cpu(), f.cls_cos.cpu(), f.cls.cpu(), f.grid, tokens)


def storage_dtype(tokens: torch.Tensor, n_images: int, samples: Sequence[Sample]) -> torch.Tensor:
    """Tokens as kept for the references: float16 when the projected set is large."""
    per_image = (
        tokens[0].numel() * 4 * max(1, sum(s.layout.num_tiles for s in samples) // len(samples))
    )
    return tokens.half() if per_image * n_images > FLOAT16_ABOVE_BYTES else tokens


def _upsample(grid_values: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """`[T, L]` -> `[T, S, S]` bilinear (align_corners=True), like the text map's upsampling."""
    x = grid_values.view(-1, 1, *grid)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
