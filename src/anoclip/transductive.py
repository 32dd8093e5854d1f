"""Dual-image and mutual scoring over an unlabeled set (METHOD.md §3, [DESIGN]).

Given the features of every image of the set (text cosines, CLS, frozen visual tokens):

1. references per unit (image tile) by CLS similarity (:mod:`anoclip.references`);
2. the visual map: nearest-neighbour patch distance to the references, aggregated;
3. fusion with the text branch at `fusion_temperature` (:mod:`anoclip.fusion`).

Maps are built image by image, so memory beyond the stored tokens stays small; batch_z
fusion first accumulates its statistics over the whole set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from .fusion import RunningMoments, fuse_maps, fuse_scores
from .preprocess import stitch
from .references import nn_distances, reference_sets, text_keep_mask
from .scoring import gaussian_blur, probs_from_cosines


def visual_scores(
    detector, features: Sequence, counts: Sequence[int], num_refs, text_cos: torch.Tensor
) -> torch.Tensor:
    """Visual anomaly score per unit and patch `[U, L]` (distances averaged over layers);
    `text_cos` `[U, nL, L, 2]` feeds the text filter."""
    s = detector.settings
    cls = torch.cat([f.cls for f in features])
    tokens = torch.cat([f.ref_tokens for f in features])  # [U, nR, L, C], float16 if large
    groups = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    refs = reference_sets(
        cls, groups, num_refs, s.pairing, torch.Generator().manual_seed(detector.seed)
    )
    keep = None
    if s.ref_filter == "text":
        patch_probs = probs_from_cosines(text_cos, s.fusion_temperature).mean(dim=1)  # [U, L]
        keep = text_keep_mask(patch_probs, s.ref_filter_quantile)
    per_layer = [
        nn_distances(tokens[:, r], refs, s.ref_agg, keep, device=detector.device)
        for r in range(tokens.shape[1])
    ]
    return torch.stack(per_layer).mean(dim=0)


def score_transductive(
    detector, samples: Sequence, features: Sequence, num_refs: int | str
) -> Iterator[tuple[object, float, torch.Tensor]]:
    """Yields (sample, score, fused map at model resolution) for every sample, in order."""
    s = detector.settings
    tau = s.fusion_temperature
    counts = [smp.layout.num_tiles for smp in samples]
    text_cos = torch.cat([f.text_cos for f in features])  # [U, nL, L, 2]
    vis = visual_scores(detector, features, counts, num_refs, text_cos)
    cls_cos = torch.cat([f.cls_cos for f in features])  # [U, V, 2]
    grid = features[0].grid
    bounds = torch.tensor([0, *counts]).cumsum(0).tolist()

    def unit_maps(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        units = slice(bounds[i], bounds[i + 1])
        text = detector.tile_maps(text_cos[units], grid, tau)
        visual = _upsample(vis[units], grid, detector.backbone.image_size)
        return text, gaussian_blur(visual, s.gaussian_sigma)

    stats = None
    if s.fusion == "batch_z":  # statistics over every pixel of the set (label-free)
        text_m, vis_m = RunningMoments(), RunningMoments()
        for i in range(len(samples)):
            text, visual = unit_maps(i)
            text_m.add(text)
            vis_m.add(visual)
        stats = (text_m.result(), vis_m.result())

    maps, vis_max = [], []
    for i, smp in enumerate(samples):
        text, visual = unit_maps(i)
        fused = fuse_maps(text, visual, s.fusion, s.fusion_alpha, stats)
        maps.append(stitch(fused, smp.layout).float().cpu().clamp(0.0, 1.0))
        vis_max.append(stitch(visual, smp.layout).max())
    unit_scores = probs_from_cosines(cls_cos, tau).mean(dim=1)  # [U]
    text_scores = torch.stack([t.mean() for t in unit_scores.split(counts)])
    scores = fuse_scores(text_scores, torch.stack(vis_max), s.fusion, s.fusion_beta)
    for smp, score, fmap in zip(samples, scores.tolist(), maps):
        yield smp, float(score), fmap


def _upsample(grid_values: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """`[U, L]` -> `[U, S, S]` bilinear (align_corners=True), like the text map's upsampling."""
    x = grid_values.view(-1, 1, *grid)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)[:, 0]
