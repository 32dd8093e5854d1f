"""Visual references: each image's patches scored against other unlabeled images (METHOD.md §3).

For a query A and a reference B (tokens L2-normalised, `[L, C]` each):

    d_B(i) = min_j ½(1 − cos(t_A(i), t_B(j)))          (position-free nearest neighbour)

and the R references of a query are combined per patch by `ref_agg`:
"interval_mean" (MuSc) the mean of the ⌈0.3·R⌉ smallest values, "min", or "mean".

Which references: R = 1 pairs images (the Dual-Image paper) by `pairing`; R = k takes the
k nearest images by CLS cosine; R = "all" takes every other image (mutual scoring).
Tiles of the same image never reference each other.

Cost: one L×L similarity per (query, reference): O(N·R·L²·C) time, so dual is O(N·L²·C)
and mutual scoring O(N²·L²·C), halved when pairs are mutual (each pair's similarity is
read both ways). Memory is bounded: references are processed in chunks whose similarity
block holds at most `chunk_elems` floats, and distances wait for later tiles only within
`reuse_bytes` (beyond it, each query is computed on its own).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from anoclip.settings import RefCount

DEFAULT_CHUNK_ELEMS = 2**25  # 32 M floats = 128 MB per similarity block
DEFAULT_REUSE_BYTES = 2**30  # distances kept for later tiles when pairs are reused


def reference_sets(
    cls: torch.Tensor,
    groups: torch.Tensor,
    num_refs: RefCount,
    pairing: str = "cls_nn",
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Reference tile indices for every tile.

    cls: `[T, C]` CLS embeddings; groups: `[T]` image id of each tile (tiles of one image
    exclude each other). num_refs: 1 (pairs, by `pairing`), k, or "all".
    """
    n = cls.shape[0]
    direction = cls.float() / cls.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = direction @ direction.T
    sim.masked_fill_(groups[:, None] == groups[None, :], float("-inf"))
    allowed = torch.isfinite(sim)
    if not allowed.any(dim=1).all():
        raise ValueError("every image needs at least one other image as reference")
    if num_refs == "all":
        return [allowed[i].nonzero()[:, 0] for i in range(n)]
    k = int(num_refs)
    if k < 1:
        raise ValueError(f"num_refs must be >= 1 or 'all', got {num_refs!r}")
    if k > 1:
        return [
            sim[i].topk(min(k, int(allowed[i].sum()))).indices for i in range(n)
        ]  # fmt: skip
    if pairing == "cls_nn":
        partner = sim.argmax(dim=1)
    elif pairing == "matching":
        partner = _greedy_matching(sim)
    elif pairing == "random":
        partner = _random_pairs(allowed, generator or torch.Generator().manual_seed(0))
    else:
        raise ValueError(f"unknown pairing {pairing!r}: use cls_nn, matching or random")
    return [partner[i : i + 1] for i in range(n)]


def _greedy_matching(sim: torch.Tensor) -> torch.Tensor:
    """Disjoint symmetric pairs, most similar first; a leftover tile borrows its nearest."""
    n = sim.shape[0]
    partner = torch.full((n,), -1, dtype=torch.long)
    iu = torch.triu_indices(n, n, offset=1)
    values = sim[iu[0], iu[1]]
    for idx in torch.argsort(values, descending=True, stable=True).tolist():
        if not math.isfinite(float(values[idx])):
            break
        a, b = int(iu[0, idx]), int(iu[1, idx])
        if partner[a] < 0 and partner[b] < 0:
            partner[a], partner[b] = b, a
    for a in (partner < 0).nonzero()[:, 0].tolist():
        partner[a] = int(sim[a].argmax())
    return partner


def _random_pairs(allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Disjoint pairs in a seeded random order; a leftover tile borrows a random partner."""
    n = allowed.shape[0]
    partner = torch.full((n,), -1, dtype=torch.long)
    order = torch.randperm(n, generator=generator).tolist()
    free = list(order)
    while free:
        a = free.pop(0)
        match = next((b for b in free if allowed[a, b]), None)
        if match is None:
            options = allowed[a].nonzero()[:, 0]
            pick = int(torch.randint(len(options), (), generator=generator))
            partner[a] = int(options[pick])
            continue
        free.remove(match)
        partner[a], partner[match] = match, a
    return partner


def averaged(how: str, refs: int) -> int:
    """How many of R reference distances the aggregate `how` averages: "interval_mean"
    ⌈0.3·R⌉ (at least 1), "min" 1, "mean" R."""
    if how == "interval_mean":
        return max(1, math.ceil(0.3 * refs))
    if how == "min":
        return 1
    if how == "mean":
        return refs
    raise ValueError(f"unknown ref_agg {how!r}: use interval_mean, min or mean")


def aggregate(d: torch.Tensor, how: str) -> torch.Tensor:
    """Per-patch distances to R references `[..., L, R]` -> `[..., L]`: the mean of the
    :func:`averaged` smallest."""
    k = averaged(how, d.shape[-1])
    if how == "min":
        return d.min(dim=-1).values
    if how == "mean":
        return d.mean(dim=-1)
    return d.topk(k, dim=-1, largest=False).values.mean(dim=-1)


def nn_distances(
    tokens: torch.Tensor,
    refs: Sequence[torch.Tensor],
    how: str = "interval_mean",
    keep: torch.Tensor | None = None,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    device: torch.device | None = None,
    reuse_bytes: int = DEFAULT_REUSE_BYTES,
    tick: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Visual anomaly scores `[T, L]` in [0, 1] of every tile against its references
    (`tick(1)` after each tile: progress).

    tokens: `[T, L, C]` L2-normalised patch tokens (any float dtype; kept where they are).
    refs: reference tile indices per tile. keep: `[T, L]` bool, the reference patches that
    may be matched (text filtering); a reference with no usable patch counts as distance 1.

    When tile j references i and i references j (always in mutual scoring over all), their
    similarity matrix is computed once and read both ways (row maxima for i, column maxima
    for j), as long as the distances waiting for later tiles fit in `reuse_bytes`.
    """
    n, length, _ = tokens.shape
    dev = device or tokens.device
    chunk = max(1, chunk_elems // (length * length))
    column = [{int(r): k for k, r in enumerate(refs[i].tolist())} for i in range(n)]
    reuse = sum(len(r) for r in refs) * length * 4 <= reuse_bytes
    pending: dict[int, torch.Tensor] = {}  # tile -> [L, R] distances filled so far
    out = torch.empty(n, length)
    for i in range(n):
        dist = pending.pop(i, None)
        if dist is None:
            dist = torch.full((length, len(refs[i])), float("nan"), device=dev)
        todo = [r for r in refs[i].tolist() if not (reuse and r < i and i in column[r])]
        query = tokens[i].to(dev, torch.float32)
        for start in range(0, len(todo), chunk):
            idx = torch.tensor(todo[start : start + chunk], dtype=torch.long)
            sim = torch.einsum("lc,rmc->rlm", query, tokens[idx].to(dev, torch.float32))
            cols = [column[i][int(r)] for r in idx]
            dist[:, cols] = _nearest(sim, None if keep is None else keep[idx].to(dev)).T
            if not reuse:
                continue
            for k, r in enumerate(idx.tolist()):  # the same similarities, seen from r
                if r > i and i in column[r]:
                    back = sim[k].T  # [L_r, L_i]
                    mask = None if keep is None else keep[i].to(dev)[None]
                    target = pending.setdefault(
                        r, torch.full((length, len(refs[r])), float("nan"), device=dev)
                    )
                    target[:, column[r][i]] = _nearest(back[None], mask)[0]
        out[i] = aggregate(dist, how).cpu()
        if tick is not None:
            tick(1)
    return out.clamp_(0.0, 1.0)


def _nearest(sim: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Similarities `[c, L_query, L_ref]` -> distances `[c, L_query]` to the nearest usable
    reference patch (`keep` `[c, L_ref]`); no usable patch gives distance 1."""
    if keep is not None:
        sim = sim.masked_fill(~keep[:, None, :], float("-inf"))
    return 0.5 * (1 - sim.amax(dim=-1).clamp_min(-1.0))


def text_keep_mask(text_probs: torch.Tensor, quantile: float = 0.9) -> torch.Tensor:
    """`[T, L]` text anomaly probabilities -> patches at or below each tile's quantile."""
    q = torch.quantile(text_probs.float(), quantile, dim=1, keepdim=True)
    return text_probs <= q
