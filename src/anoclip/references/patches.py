"""MuSc-grade patch features for any backbone, and their mutual nearest-neighbour scores.

From one feature map per layer (stage) l, `[N, C_l, h_l, w_l]` (a CNN stage, or CLIP tokens
`[N, L, C]` put on their grid by :func:`tokens_to_map`):

    1. z = LN_C(x)                       LayerNorm over channels at each position, no affine
    2. z_r = AvgPool_{r×r}(z)            neighbourhood aggregation, stride 1, "same" padding
    3. z_r ← Resize_bilinear(z_r, G)     every layer onto one common grid G = (h, w)
    4. f_{l,r}(p) = z_r(p) / ‖z_r(p)‖    one `[N, L, C_l]` feature set per (layer, radius), L = h·w

Step 2 is MuSc's LNAMD (xrli-U/MuSc: models/modules/_LNAMD.py): it unfolds r×r windows with
zero padding and averages each channel over the window, i.e. average pooling whose border
windows count the padded zeros. Padding is left out of the mean here (`count_include_pad=
False`); since a position's vector is only rescaled, the L2-normalised features are the same.
MuSc likewise aggregates on each layer's own grid and then resizes to the first layer's.
G is set by a stride g in input pixels (G = ⌈H/g⌉ × ⌈W/g⌉; default 12, i.e. 20×20 at 240 px,
between the stride-8 and stride-16 stages), the finest used layer's grid ("finest"), the
coarsest ("coarsest": 4× fewer patches per stride step, 16× fewer patch pairs) or a fixed (h, w).

Layer fusion "concat" (:func:`concat_layers`, PatchCore-style) replaces the per-layer sets
by one set per radius, f_r = concat_l f_{l,r} / sqrt(#layers): one nearest neighbour per
patch that must match in every layer at once, instead of one per layer.

Mutual score of image i with references R_i, per (layer, radius):

    d_{l,r}(i, p) = IM_{j ∈ R_i} min_q ½(1 − ⟨f_{l,r}(i, p), f_{l,r}(j, q)⟩)
    s(i, p) = mean_{l,r} d_{l,r}(i, p)

with IM the interval mean of references.py (mean of the ⌈0.3·|R_i|⌉ smallest), taken per
(layer, radius) before the mean, as MuSc does. The image score is max_p s(i, p).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from anoclip.references.distances import DEFAULT_CHUNK_ELEMS, aggregate, nn_distances

Key = tuple[int, int]  # (layer position in the maps list, radius r)
DEFAULT_RADII = (1, 3, 5)


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """ViT tokens `[B, L, C]` (L = h·w, or h·w + 1 with a leading CLS, dropped) ->
    `[B, C, h, w]`."""
    h, w = grid
    b, length, c = tokens.shape
    if length == h * w + 1:
        tokens = tokens[:, 1:]
    elif length != h * w:
        raise ValueError(f"{length} tokens do not fill a {h}x{w} grid")
    return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


def layer_norm_channels(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """`[B, C, h, w]` -> (x − μ_C) / sqrt(σ²_C + eps) at every position (no affine)."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=eps).permute(0, 3, 1, 2)


def neighbourhood_mean(x: torch.Tensor, r: int) -> torch.Tensor:
    """`[B, C, h, w]` -> mean over the r×r window centred at each position (r odd; windows
    clipped at the border, so the grid keeps its size)."""
    if r < 1 or r % 2 == 0:
        raise ValueError(f"aggregation radius must be odd and >= 1, got {r}")
    if r == 1:
        return x
    return F.avg_pool2d(x, r, stride=1, padding=r // 2, count_include_pad=False)


GridChoice = int | str | tuple[int, int]  # a stride, "finest", "coarsest" or (h, w)


def common_grid(
    maps: Sequence[torch.Tensor],
    grid: GridChoice = "finest",
    input_size: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """The grid all layers are resized to: a stride g in input pixels (⌈H/g⌉, ⌈W/g⌉ for the
    backbone's input `input_size` = (H, W)), the finest (largest) or coarsest of the maps'
    grids, or a fixed (h, w)."""
    if isinstance(grid, int):
        if input_size is None:
            raise ValueError("a grid given as a stride needs the input size")
        if grid < 1:
            raise ValueError(f"grid stride must be >= 1, got {grid}")
        return -(-int(input_size[0]) // grid), -(-int(input_size[1]) // grid)
    if not isinstance(grid, str):
        return int(grid[0]), int(grid[1])
    grids = [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]
    if grid == "finest":
        return max(grids, key=lambda s: s[0] * s[1])
    if grid == "coarsest":
        return min(grids, key=lambda s: s[0] * s[1])
    raise ValueError(f"unknown grid {grid!r}: use finest, coarsest or (h, w)")


def normalise(x: torch.Tensor, how: str) -> torch.Tensor:
    """Step 1 on `[B, C, h, w]`: "channels" (LayerNorm over C per position), "map" (MuSc:
    LayerNorm over (C, h, w) per image) or "none"."""
    if how == "channels":
        return layer_norm_channels(x)
    if how == "map":
        return F.layer_norm(x, tuple(x.shape[1:]))
    if how == "none":
        return x
    raise ValueError(f"unknown feature norm {how!r}: use channels, map or none")


def patch_features(
    maps: Sequence[torch.Tensor],
    radii: Sequence[int] = DEFAULT_RADII,
    grid: GridChoice = "finest",
    norm: str = "channels",
    input_size: tuple[int, int] | None = None,
) -> dict[Key, torch.Tensor]:
    """Per-layer maps `[B, C_l, h_l, w_l]` -> {(l, r): `[B, L, C_l]`} L2-normalised patch
    features on the common grid (:func:`common_grid`; `input_size` for a stride), L = h·w
    row-major."""
    g = common_grid(maps, grid, input_size)
    out: dict[Key, torch.Tensor] = {}
    for layer, m in enumerate(maps):
        z = normalise(m.float(), norm)
        for r in radii:
            zr = neighbourhood_mean(z, r)
            if tuple(zr.shape[-2:]) != tuple(g):
                zr = F.interpolate(zr, size=g, mode="bilinear", align_corners=False)
            f = zr.flatten(2).transpose(1, 2)
            out[(layer, r)] = F.normalize(f, dim=-1)
    return out


def global_features(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-layer maps -> one global descriptor per image `[B, Σ C_l]`:
    g = n(concat_l n(GAP(x_l))), the image-level feature for reference choice and RsCIN."""
    parts = [F.normalize(m.float().mean(dim=(2, 3)), dim=-1) for m in maps]
    return F.normalize(torch.cat(parts, dim=-1), dim=-1)


def layout_descriptor(maps: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Position-aware image descriptor `[B, Σ_l C_l·h·w]` on the common grid (h, w):

        d = n(concat_l n(flatten(Resize_G(LN_C(x_l)))))

    Unlike :func:`global_features` (pooled, so aligned products all look alike) it separates
    near-duplicates from merely similar images; it is what the near-duplicate guard compares.
    On the common grid rather than one layer's own: a stride-32 stage alone (8×8 at 240 px)
    makes natural neighbours as alike as copies (EfficientNet-Lite0 on MVTec: natural
    nearest-neighbour cosine up to 0.97 there, 0.92 on the 20×20 grid; copies ≥ 0.99)."""
    parts = []
    for m in maps:
        z = layer_norm_channels(m.float())
        if tuple(z.shape[-2:]) != tuple(grid):
            z = F.interpolate(z, size=grid, mode="bilinear", align_corners=False)
        parts.append(F.normalize(z.flatten(1), dim=-1))
    return F.normalize(torch.cat(parts, dim=-1), dim=-1)


def concat_layers(features: Mapping[Key, torch.Tensor]) -> dict[Key, torch.Tensor]:
    """Layer fusion "concat" (PatchCore-style): per radius r one feature set
    f_r = concat_l f_{l,r} / sqrt(#layers), key (-1, r), still unit norm, so

        ½(1 − ⟨f_r(p), f_r(q)⟩) = mean_l ½(1 − ⟨f_{l,r}(p), f_{l,r}(q)⟩)

    at one joint nearest neighbour q (instead of one per layer, as with "mean")."""
    radii = sorted({r for _, r in features})
    out: dict[Key, torch.Tensor] = {}
    for r in radii:
        parts = [v for (_, rr), v in sorted(features.items()) if rr == r]
        out[(-1, r)] = torch.cat(parts, dim=-1) / math.sqrt(len(parts))
    return out


def select(features: Mapping[Key, torch.Tensor], index: torch.Tensor) -> dict[Key, torch.Tensor]:
    """The same rows (images) of every feature set."""
    return {k: v[index] for k, v in features.items()}


# ------------------------------------------------------------------ scoring


def mutual_scores(
    features: Mapping[Key, torch.Tensor],
    refs: Sequence[torch.Tensor],
    how: str = "interval_mean",
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    tick: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """Patch scores `[N, L]`: s = mean over (layer, radius) of the aggregated nearest-neighbour
    distances to each image's references (`references.nn_distances`, bounded memory);
    `tick` advances by one per image over all feature sets (progress)."""
    total = None
    step = None if tick is None else (lambda k: tick(k / len(features)))
    for feats in features.values():
        d = nn_distances(feats, refs, how=how, chunk_elems=chunk_elems, tick=step)
        total = d if total is None else total + d
    assert total is not None, "no features"
    return total / len(features)


def pairwise_distances(tokens: torch.Tensor, block_elems: int = 2**22) -> torch.Tensor:
    """All-pairs nearest-neighbour distances `[N, N, L]` (diagonal NaN):

        D[i, j, p] = min_q ½(1 − ⟨t_i(p), t_j(q)⟩)

    for L2-normalised tokens `[N, L, C]`. Each pair's L×L similarity is computed once and read
    both ways (row maxima for i, column maxima for j), a few references per `[L, r·L]` matmul
    of at most `block_elems` floats (small blocks stay in cache). Memory: N²·L floats for the
    result; for experiments that try many reference choices on one set (each is then
    :func:`reduce_references`), or sets small enough for that.
    """
    n, length, c = tokens.shape
    out = torch.full((n, n, length), float("nan"))
    per = max(1, block_elems // (length * length))
    t = tokens.float()
    for i in range(n - 1):
        for start in range(i + 1, n, per):
            stop = min(n, start + per)
            sim = (t[i] @ t[start:stop].reshape(-1, c).T).view(length, stop - start, length)
            out[i, start:stop] = 0.5 * (1 - sim.amax(dim=2).T)
            out[start:stop, i] = 0.5 * (1 - sim.amax(dim=0))
    return out.clamp_(0.0, 1.0)


def reduce_references(
    dist: torch.Tensor, refs: Sequence[torch.Tensor], how: str = "interval_mean"
) -> torch.Tensor:
    """All-pairs distances `[N, N, L]` and reference indices per image -> `[N, L]`."""
    return torch.stack([aggregate(dist[i, r].T, how) for i, r in enumerate(refs)])


def upsample(scores: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Patch scores `[N, L]` on `grid` -> maps `[N, H, W]` (bilinear, align_corners=False)."""
    m = scores.reshape(-1, 1, *grid)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0]


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Maps `[N, H, W]` smoothed by a Gaussian of std `sigma` px (kernel 2⌈4σ⌉+1, edge
    padding); sigma <= 0 returns the maps."""
    if sigma <= 0:
        return maps
    radius = math.ceil(4 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    m = F.pad(maps[:, None], (radius, radius, radius, radius), mode="replicate")
    m = F.conv2d(m, k.view(1, 1, 1, -1))
    m = F.conv2d(m, k.view(1, 1, -1, 1))
    return m[:, 0]


def image_scores(scores: torch.Tensor) -> torch.Tensor:
    """Patch scores `[N, L]` (or maps `[N, H, W]`) -> image scores `[N]` = max over patches."""
    return scores.flatten(1).amax(dim=1)
