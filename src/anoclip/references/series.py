"""The series screen (issue 20): set modes that do not explain repeated defects away.

On a real line defects repeat: the same part photographed again
under another exposure, a series of parts with one defect. The nearest images then carry the
query's defect and explain it away; a cosine guard on a descriptor cannot tell them from
natural neighbours (magnetic tile, re-exposures: layout cosine 0.80-0.95, natural neighbours
up to 0.90). What tells them apart is how well a candidate explains the query compared with
its other close candidates. With d_j(p) `[M, L]` the query's patch distances to its M most
similar images (:func:`pool_distances`, all (layer, radius) sets averaged):

    c(p) = median_j d_j(p)                          consensus of the candidates
    r_j  = median_p (d_j(p) + ε) / (c(p) + ε)       how much better j explains the query

j is near-identical when r_j < ρ. Ratios are relative to the query's own neighbourhood, so an
aligned product whose natural neighbours all match closely is not flagged, and patch
distances are position-free, so crops shifted between shots still match; per-position
LayerNorm takes most of an exposure change out. Measured on the M = 10 most similar of each
image (EfficientNet-Lite0, default patch features; benchmarks/series_defects.py): magnetic
tile, the same tile under another exposure r p50 0.44, p90 0.61 (98.6 % below 0.7), other
tiles p5 0.94, p50 1.02 (2 % below 0.7: tiles shot again in a later session); MVTec AD
transistor, no repeats, p1 0.67, p5 0.80, p50 1.00. ρ = 0.7 lies between the two; 0.6 lets
5 % of re-exposures through as dual references, 0.8 flags 42 % of transistor images.
The screen needs at least 3 candidates (a median of fewer is no consensus).

An image with any near-identical candidate is flagged: when at least half the images are,
near-identical clusters dominate the set (:func:`series_verdict`) and its scores cannot be
fully trusted. Its m near-identical candidates are skipped as references (the next most
similar are taken) when they could explain its defects away, i.e. when they would make up at
least half of what the aggregate of its R references averages (distances.averaged):

    skip ⟺ 2·m ≥ A(R),   A = 1 ("min"), ⌈0.3·R⌉ ("interval_mean"), R ("mean")

So dual (R = 1) and small k skip them, while "all" (R = 99 on a 100-image set: the mean of
the 30 smallest) keeps its references, the interval mean already being robust to a few
near-zero ones. Skipping them there anyway changed little in AUROC but moved the unlabeled
decision bounds (transistor, --normal default mode: good parts flagged 10 % -> 32 %).

Scores. R_i skips the images found near-identical to i among its M most similar, and "all"
takes at most the `cap` most similar others. The distances to a candidate pool P_i are
computed once (:func:`pool_distances`, each unordered pair's L×L similarity read both ways)
and serve the screen and the scores alike (equal to patches.mutual_scores of the chosen
references):

    cost ∝ Σ_i |P_i| ≤ N·max(M, k, cap) pairs      (mutual "all" uncapped: N(N−1)/2)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from anoclip.notes import UNTRUSTED_SHARE, series_message, series_untrusted
from anoclip.references.distances import DEFAULT_CHUNK_ELEMS, aggregate, averaged
from anoclip.references.neighbours import (
    RefCount,
    nearest_references,
    other_similarities,
    pick,
)
from anoclip.references.patches import Key, mutual_scores
from anoclip.references.scorer import Tick

SCREEN_SIZE = 10  # M: candidates the series screen compares per image
DUPLICATE_RATIO = 0.7  # ρ: r_j below it is near-identical
MIN_SCREEN = 3  # fewer candidates give no consensus
RATIO_EPS = 1e-6
DEFAULT_CAP = 128  # "all": the most similar others scored (benchmarks/series_defects.py)


def duplicate_ratios(dist: torch.Tensor) -> torch.Tensor:
    """One query's patch distances to its M candidates `[M, L]` -> ratios r `[M]` (module
    doc): r_j = median_p (d_j(p) + ε) / (median_j' d_j'(p) + ε), medians interpolated."""
    d = dist.float()
    consensus = d.quantile(0.5, dim=0)
    return ((d + RATIO_EPS) / (consensus + RATIO_EPS)).quantile(0.5, dim=1)


def screen_duplicates(
    dists: Sequence[torch.Tensor], ratio: float = DUPLICATE_RATIO
) -> list[torch.Tensor]:
    """Per image its candidates' distances `[M_i, L]` -> bool `[M_i]`: near-identical
    (r_j < `ratio`). Fewer than MIN_SCREEN candidates: none (no consensus)."""
    out = []
    for d in dists:
        if d.shape[0] < MIN_SCREEN:
            out.append(torch.zeros(d.shape[0], dtype=torch.bool))
        else:
            out.append(duplicate_ratios(d) < ratio)
    return out


def wanted_references(num_refs: RefCount, others: int, cap: int | None) -> int:
    """R: the references an image gets from `others` candidates (k, or "all" of them, at
    most `cap`)."""
    wanted = others if num_refs == "all" else int(num_refs)
    return min(wanted, cap) if num_refs == "all" and cap is not None else wanted


def skipped(duplicates: torch.Tensor, how: str, wanted: int) -> torch.Tensor:
    """The near-identical candidates `[M]` bool skipped as references: all of them when
    they would make up at least half of what the aggregate of R = `wanted` averages
    (2·m ≥ A(R), module doc), else none."""
    if 2 * int(duplicates.sum()) >= averaged(how, wanted):
        return duplicates
    return torch.zeros_like(duplicates)


def series_references(
    glob: torch.Tensor,
    num_refs: RefCount,
    pool: Sequence[torch.Tensor],
    duplicates: Sequence[torch.Tensor],
    exclude: torch.Tensor | None = None,
    cap: int | None = None,
) -> list[torch.Tensor]:
    """Reference indices per image, skipping its near-identical candidates (`pool[i]` where
    `duplicates[i]`) and `exclude` `[N, N]` pairs: the k most similar others by global
    cosine (most similar first), or for "all" every other image, the `cap` most similar when
    given (cap None or >= N-1: all, in index order). When skipping would leave an image none,
    the near-identical ones come back, then the excluded (never without references)."""
    sim = other_similarities(glob, num_refs)
    out = []
    for i, row in enumerate(sim):
        guard = None if exclude is None else exclude[i]
        skip = torch.zeros_like(row, dtype=torch.bool) if guard is None else guard.clone()
        skip[pool[i][duplicates[i]]] = True
        out.append(pick(row, num_refs, [skip, guard], cap))
    return out


@dataclass(frozen=True)
class SeriesVerdict:
    """Whether near-identical images dominate a set (module doc).

    flags `[N]` bool: the image has near-identical images among its screened candidates
    (`partners[i]`, their indices); share: flagged / N; untrusted: share >= the bound."""

    flags: torch.Tensor
    partners: list[torch.Tensor]
    share: float
    untrusted: bool
    bound: float = UNTRUSTED_SHARE

    def warning(self) -> str:
        """The one-line warning for an untrusted set."""
        return series_message(int(self.flags.sum()), int(self.flags.numel()))


def series_verdict(
    pool: Sequence[torch.Tensor],
    duplicates: Sequence[torch.Tensor],
    bound: float = UNTRUSTED_SHARE,
) -> SeriesVerdict:
    """Per-image flags (any near-identical candidate) and the set-level verdict:
    untrusted ⟺ flagged / N >= `bound`."""
    partners = [p[d] for p, d in zip(pool, duplicates)]
    return verdict_of_flags([len(p) > 0 for p in partners], bound, partners)


def verdict_of_flags(
    flags: Sequence[bool],
    bound: float = UNTRUSTED_SHARE,
    partners: list[torch.Tensor] | None = None,
) -> SeriesVerdict:
    """The set-level verdict from per-image flags alone (e.g. gathered from predictions):
    untrusted ⟺ flagged / N >= `bound`; partners unknown: empty."""
    f = torch.tensor(list(flags), dtype=torch.bool)
    n = int(f.numel())
    share = int(f.sum()) / n if n else 0.0
    if partners is None:
        partners = [torch.zeros(0, dtype=torch.long) for _ in range(n)]
    return SeriesVerdict(f, partners, share, series_untrusted(int(f.sum()), n, bound), bound)


def pool_distances(
    features: Mapping[Key, torch.Tensor],
    pool: Sequence[torch.Tensor],
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
    tick: Tick | None = None,
) -> dict[Key, list[torch.Tensor]]:
    """Per feature set, each image's distances to its candidates `pool[i]` `[M_i, L]`:

        d_k[i][m, p] = min_q ½(1 − ⟨f_k(i, p), f_k(pool_i[m], q)⟩)

    (clamped to [0, 1]). An unordered pair {i, j} needed either way (j ∈ P_i or i ∈ P_j) is
    computed once, its `[L, L]` similarity read both ways (row and column maxima); at most
    `chunk_elems` similarities are held at a time. Memory: Σ_i |P_i|·L floats per set.
    `tick` advances by N over all feature sets, in proportion to the pairs done (progress)."""
    n = len(pool)
    column = [{int(j): m for m, j in enumerate(p.tolist())} for p in pool]
    partners: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in column[i]:
            a, b = min(i, j), max(i, j)
            if a == b:
                raise ValueError(f"image {i} is in its own candidate pool")
            if b not in partners[a]:
                partners[a].append(b)
    out: dict[Key, list[torch.Tensor]] = {}
    pairs = sum(len(p) for p in partners)
    for key, tokens in features.items():
        _, length, _ = tokens.shape
        dist = [torch.empty(len(p), length) for p in pool]
        chunk = max(1, chunk_elems // (length * length))
        for i in range(n):
            query = tokens[i].float()
            todo = sorted(partners[i])
            for start in range(0, len(todo), chunk):
                idx = todo[start : start + chunk]
                sim = torch.einsum("lc,rmc->rlm", query, tokens[idx].float())
                forward = 0.5 * (1 - sim.amax(dim=2))  # [r, L_i]: i's patches against j
                back = 0.5 * (1 - sim.amax(dim=1))  # [r, L_j]: j's patches against i
                for k, j in enumerate(idx):
                    if j in column[i]:
                        dist[i][column[i][j]] = forward[k]
                    if i in column[j]:
                        dist[j][column[j][i]] = back[k]
            if tick is not None:  # by the pairs done: later images have fewer left
                tick(n * len(todo) / max(1, pairs) / len(features))
        out[key] = [d.clamp_(0.0, 1.0) for d in dist]
    return out


@dataclass
class SeriesScores:
    """What :func:`series_scores` found: patch scores `[N, L]`, the references of each image,
    its screened candidates (`pool[i]`, most similar first) and which were near-identical,
    and the set's :class:`SeriesVerdict`."""

    scores: torch.Tensor
    references: list[torch.Tensor]
    pool: list[torch.Tensor]
    duplicates: list[torch.Tensor]
    verdict: SeriesVerdict


def candidate_count(num_refs: RefCount, n: int, screen: int, cap: int | None) -> int:
    """Candidates per image whose distances are computed up front: the screen's M, or k when
    larger, or the cap of "all" (the screen's M alone for "all" uncapped: then the scores
    stream through :func:`mutual_scores`)."""
    if num_refs == "all":
        want = screen if cap is None or cap >= n - 1 else max(screen, cap)
    else:
        want = max(screen, int(num_refs))
    return max(1, min(want, n - 1))


def series_scores(
    features: Mapping[Key, torch.Tensor],
    glob: torch.Tensor,
    num_refs: RefCount,
    how: str = "interval_mean",
    exclude: torch.Tensor | None = None,
    *,
    ratio: float = DUPLICATE_RATIO,
    screen: int = SCREEN_SIZE,
    cap: int | None = DEFAULT_CAP,
    tick: Tick | None = None,
    bound: float = UNTRUSTED_SHARE,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> SeriesScores:
    """Mutual patch scores `[N, L]` with the series screen (module doc): candidates P_i = the
    most similar others by global cosine (`exclude` `[N, N]` pairs skipped, e.g. the layout
    guard), near-identical ones among the first `screen` skipped as references, "all" capped
    at `cap` (None: every other image). Equal to ``mutual_scores(features, references,
    how)``; the candidates' distances are computed once and reused for the scores. `tick`
    advances by one per image in all (progress)."""
    n = glob.shape[0]
    count = candidate_count(num_refs, n, screen, cap)
    streamed = num_refs == "all" and (cap is None or cap >= n - 1)
    share = count / (count + n - 1) if streamed else 1.0  # of the work: the candidates'
    pool = nearest_references(glob, count, exclude)
    dists = pool_distances(features, pool, chunk_elems, _scaled(tick, share))
    head = [min(screen, len(p)) for p in pool]
    mean = [torch.stack([d[i][: head[i]] for d in dists.values()]).mean(dim=0) for i in range(n)]
    dup_head = screen_duplicates(mean, ratio)
    screened = [p[:h] for p, h in zip(pool, head)]
    wanted = wanted_references(num_refs, n - 1, cap)
    skip = [skipped(d, how, wanted) for d in dup_head]
    refs = series_references(glob, num_refs, screened, skip, exclude, cap)
    verdict = series_verdict(screened, dup_head, bound)
    if streamed:  # N² pairs, through the streaming search
        scores = mutual_scores(features, refs, how, chunk_elems, _scaled(tick, 1 - share))
    else:
        pool, dists = _with_missing(features, pool, dists, refs, chunk_elems)
        scores = _pooled_scores(dists, pool, refs, how)
    return SeriesScores(scores, refs, screened, dup_head, verdict)


def _scaled(tick: Tick | None, weight: float) -> Tick | None:
    """`tick` for a phase that is `weight` of the work."""
    return None if tick is None else (lambda k: tick(k * weight))


def _with_missing(
    features: Mapping[Key, torch.Tensor],
    pool: list[torch.Tensor],
    dists: dict[Key, list[torch.Tensor]],
    refs: Sequence[torch.Tensor],
    chunk_elems: int,
) -> tuple[list[torch.Tensor], dict[Key, list[torch.Tensor]]]:
    """The candidates extended by the references outside them (when skipped near-identical
    images pushed an image's references past its candidates), with their distances."""
    missing = [r[~torch.isin(r, p)] for r, p in zip(refs, pool)]
    if not any(len(m) for m in missing):
        return pool, dists
    extra = pool_distances(features, missing, chunk_elems)
    pool = [torch.cat([p, m]) for p, m in zip(pool, missing)]
    merged = {k: [torch.cat([a, b]) for a, b in zip(dists[k], extra[k])] for k in dists}
    return pool, merged


def _pooled_scores(
    dists: Mapping[Key, list[torch.Tensor]],
    pool: Sequence[torch.Tensor],
    refs: Sequence[torch.Tensor],
    how: str,
) -> torch.Tensor:
    """Scores `[N, L]` from candidate distances: mean over sets of IM over each image's
    references (all among its candidates)."""
    total = None
    for per_image in dists.values():
        rows = []
        for d, p, r in zip(per_image, pool, refs):
            col = {int(j): m for m, j in enumerate(p.tolist())}
            rows.append(aggregate(d[[col[int(j)] for j in r.tolist()]].T, how))
        s = torch.stack(rows)
        total = s if total is None else total + s
    assert total is not None, "no features"
    return total / len(dists)
