"""Image-level neighbours over global features `[N, D]` (L2-normalised rows): reference choice
with a near-duplicate guard, and RsCIN smoothing of image scores.

Near-duplicate guard. A reference that is (nearly) the query itself explains the query's
defects away: with R = 1 (dual) or small k its distance is ~0 everywhere. References j with

    cos(g_i, g_j) > threshold

are skipped for query i, and the next most similar images are taken instead.

RsCIN (MuSc, xrli-U/MuSc: models/modules/_RsCIN.py). With s the image scores and
W = G·Gᵀ the cosine similarities (self included, W_ii = 1; negative ones clipped to 0), for
each k keep each row's k largest entries (W^k), row-normalise and average:

    s'_i = 1/|K| Σ_{k ∈ K} Σ_j W^k_ij s_j / Σ_j W^k_ij

k = 1 returns s (the self weight), larger k mixes in the most similar images. MuSc uses
K = {1, 2, 3} on MVTec AD. MuSc first min-max normalises s over the set; each row here is a
weighted mean (weights summing to 1), which commutes with that affine map, so the ranking
(AUROC, AP) is the same, while the scores keep their own scale: a threshold calibrated on
known-good images, scored as their own set, stays comparable with any other set's scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RefCount = int | str  # k >= 1, or "all"


def cosine_matrix(glob: torch.Tensor) -> torch.Tensor:
    """`[N, D]` -> `[N, N]` cosine similarities."""
    g = torch.nn.functional.normalize(glob.float(), dim=-1)
    return g @ g.T


def duplicate_mask(glob: torch.Tensor, threshold: float) -> torch.Tensor:
    """`[N, N]` bool: j is a near-duplicate of i (cos > threshold, i ≠ j)."""
    dup = cosine_matrix(glob) > threshold
    dup.fill_diagonal_(False)
    return dup


def nearest_references(
    glob: torch.Tensor,
    num_refs: RefCount,
    exclude: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Reference indices per image: the k most similar other images by global cosine
    (k = 1: dual), or every other image ("all"). `exclude` `[N, N]` bool (e.g. a
    :func:`duplicate_mask`) removes candidates; a query left with none keeps the excluded
    ones (a guard never leaves an image without references)."""
    sim = other_similarities(glob, num_refs)
    return [pick(row, num_refs, [None if exclude is None else exclude[i]])
            for i, row in enumerate(sim)]  # fmt: skip


def other_similarities(glob: torch.Tensor, num_refs: RefCount) -> torch.Tensor:
    """`[N, N]` cosines with −inf on the diagonal, after checking N ≥ 2 and `num_refs`."""
    if glob.shape[0] < 2:
        raise ValueError("every image needs at least one other image as reference")
    if num_refs != "all" and int(num_refs) < 1:
        raise ValueError(f"num_refs must be >= 1 or 'all', got {num_refs!r}")
    sim = cosine_matrix(glob)
    sim.fill_diagonal_(float("-inf"))
    return sim


def pick(
    row: torch.Tensor,
    num_refs: RefCount,
    blocked: Sequence[torch.Tensor | None],
    cap: int | None = None,
) -> torch.Tensor:
    """One image's references from its similarities `[N]` (−inf: never): the first of the
    `blocked` `[N]` masks that leaves a candidate removes its candidates (none does: all
    stay); then the k most similar (most similar first), or for "all" every candidate, the
    `cap` most similar when given (cap None or ≥ the candidates: all, in index order)."""
    for b in blocked:
        if b is not None and bool((~b & torch.isfinite(row)).any()):
            row = row.masked_fill(b, float("-inf"))
            break
    allowed = torch.isfinite(row)
    if num_refs == "all" and (cap is None or cap >= int(allowed.sum())):
        return allowed.nonzero()[:, 0]
    k = int(cap) if num_refs == "all" else int(num_refs)  # type: ignore[arg-type]
    return row.topk(min(k, int(allowed.sum()))).indices


def rscin(scores: torch.Tensor, glob: torch.Tensor, ks: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """Image scores `[N]` smoothed over their k most similar images (see module doc)."""
    s = scores.double()
    w = cosine_matrix(glob).double().clamp_(min=0.0)
    n = w.shape[0]
    outs = []
    for k in ks:
        kk = max(1, min(int(k), n))
        top = w.topk(kk, dim=1)
        mask = torch.zeros_like(w).scatter_(1, top.indices, 1.0)
        wk = w * mask
        outs.append((wk @ s) / wk.sum(dim=1))
    return torch.stack(outs).mean(dim=0).to(scores.dtype)
