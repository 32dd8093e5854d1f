"""The rolling reference memory (issue 26): the Dual-Image idea on a stream of parts.

Each new part is scored against the parts that came before it and were decided ok, the
memory R (the last `size` of them, oldest first), as a set member is scored against its
references, and against the known-good bank B when there is one:

    d_j(p)   = mean_k min_q ½(1 − ⟨f_k(p), f_k(j, q)⟩)          per memory part j  `[M, L]`
    s_mem(p) = IM_{j ∈ R'} d_j(p)                               IM = ref_agg
    s(p)     = bank_combine(s_mem(p), s_bank(p))                (s_mem alone without B)

R' are the memory parts most similar by global cosine (k of them, or all up to refs_cap),
without layout near-duplicates (duplicate_threshold) and, by the series screen (series.py,
ρ = series_ratio on the SCREEN_SIZE most similar), without parts that explain this one far
better than the others do: a re-photographed part cannot vouch for itself. Review and
defect parts never enter; the caller admits the ok ones (:meth:`Memory.admit`).

Calibration (border equaliser, global branch): the memory parts' own patch scores, image
scores and global distances from when they were scored, i.e. how good parts score here
(:meth:`Memory.profile`); before MIN_PROFILE parts, the bank's leave-one-out profile.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from anoclip.references.bank import BankMeta, NormalBank
from anoclip.references.distances import aggregate
from anoclip.references.global_score import reference_distance
from anoclip.references.neighbours import cosine_matrix, pick
from anoclip.references.patches import Key
from anoclip.references.profile import Profile
from anoclip.references.series import SCREEN_SIZE, screen_duplicates, skipped, wanted_references
from anoclip.settings import RefCount, Settings

MIN_PROFILE = 8  # memory parts from which the memory calibrates itself


@dataclass
class Part:
    """One scored part as the memory keeps it: patch features {(l, r): `[L, C_k]`}, global
    `[D]`, layout `[K]` and statistics `[D']` descriptors, and its calibration values:
    patch scores `[L]` (before the equaliser), image score, global distance (nan: none)."""

    feats: dict[Key, torch.Tensor]
    glob: torch.Tensor
    layout: torch.Tensor
    stats: torch.Tensor | None
    patches: torch.Tensor
    image: float
    gdist: float

    def to_bytes(self) -> bytes:
        """float16 features (the memory on disk), the rest float32."""
        half = {f"{k[0]}_{k[1]}": v.half() for k, v in self.feats.items()}
        buf = io.BytesIO()
        names = ("glob", "layout", "stats", "patches", "image", "gdist")
        rest = {n: getattr(self, n) for n in names}
        torch.save({"feats": half, **rest}, buf)
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Part:
        d = torch.load(io.BytesIO(data), weights_only=True)
        key = lambda n: tuple(int(x) for x in n.split("_"))  # noqa: E731
        feats = {key(n): v.float() for n, v in d["feats"].items()}
        return Part(feats, d["glob"], d["layout"], d["stats"], d["patches"], d["image"], d["gdist"])


def part_distances(query: dict[Key, torch.Tensor], refs: dict[Key, torch.Tensor]) -> torch.Tensor:
    """One part's patches {k: `[L, C]`} against the memory {k: `[M, L', C]`} -> `[K, M, L]`
    d_k,j(p) = min_q ½(1 − ⟨f_k(p), f_k(j, q)⟩), clamped to [0, 1]."""
    out = []
    for k, q in query.items():
        sim = torch.einsum("lc,mqc->mlq", q.float(), refs[k])
        out.append((0.5 * (1 - sim.amax(dim=2))).clamp_(0.0, 1.0))
    return torch.stack(out)


def chosen_references(
    sims: torch.Tensor, dist: torch.Tensor, dup: torch.Tensor, refs: RefCount, s: Settings
) -> tuple[torch.Tensor, bool]:
    """The memory parts one part is scored against (module doc), picked as series.py picks a
    set member's (neighbours.pick, series.skipped), from its global cosines `[M]`, mean
    distances `[M, L]` and layout-duplicate flags `[M]`; and whether the screen found
    near-identical parts among the SCREEN_SIZE most similar."""
    head = pick(sims, SCREEN_SIZE, [dup])
    near = torch.zeros(len(head), dtype=torch.bool)
    if s.series_ratio > 0:
        near = screen_duplicates([dist[head]], s.series_ratio)[0]
    cap = s.refs_cap or None
    others = int((~dup).sum()) or len(dup)  # the layout guard never leaves none
    skip = dup.clone()
    skip[head[skipped(near, s.ref_agg, wanted_references(refs, others, cap))]] = True
    return pick(sims, refs, [skip, dup], cap), bool(near.any())


class Memory:
    """The known-good `bank` (None: none) plus the last `size` ok parts (module doc); `meta`
    is what the features depend on (the bank's); `refs`: k or "all" references per part."""

    def __init__(self, meta: BankMeta, bank: NormalBank | None, size: int, refs: RefCount) -> None:
        self.meta, self.bank, self.size, self.refs = meta, bank, int(size), refs
        self.parts: deque[tuple[str, Part, int]] = deque()  # id, part, its row in the buffer
        self.observed: dict[str, Part] = {}  # filled as parts are scored, keyed by source
        self._buffer: dict[Key, torch.Tensor] = {}  # {k: [size, L, C]}, rows reused in turn

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def ids(self) -> list[str]:
        return [i for i, _, _ in self.parts]

    def admit(self, ident: str, part: Part) -> str | None:
        """Add an ok part; returns the id of the part it pushed out (None: none)."""
        gone, row = None, len(self.parts)
        if len(self.parts) == self.size:
            gone, _, row = self.parts.popleft()
        for k, v in part.feats.items():
            if k not in self._buffer:
                self._buffer[k] = torch.empty(self.size, *v.shape)
            self._buffer[k][row] = v
        self.parts.append((ident, part, row))
        return gone

    def patch_scores(
        self, feats: dict[Key, torch.Tensor], glob: torch.Tensor, layout: torch.Tensor, s: Settings
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parts {k: `[N, L, C]`} -> s_mem `[N, L]` and `[N]` bool near-identical flags."""
        rows_of = torch.tensor([r for _, _, r in self.parts])
        mem = {k: v[: len(self.parts)] for k, v in self._buffer.items()}  # rows 0..M-1 in use
        sims = cosine_matrix(torch.cat([glob, torch.stack([p.glob for _, p, _ in self.parts])]))
        dups = cosine_matrix(torch.cat([layout, torch.stack([p.layout for _, p, _ in self.parts])]))
        n, rows, flags = glob.shape[0], [], []
        for i in range(n):
            d = part_distances({k: v[i] for k, v in feats.items()}, mem)[:, rows_of]  # [K, M, L]
            chosen, near = chosen_references(sims[i, n:], d.mean(0), dups[i, n:] >
                                              s.duplicate_threshold, self.refs, s)  # fmt: skip
            rows.append(aggregate(d[:, chosen].transpose(1, 2), s.ref_agg).mean(0))
            flags.append(near)
        return torch.stack(rows), torch.tensor(flags, dtype=torch.bool)

    @property
    def has_stats(self) -> bool:
        return all(p.stats is not None for _, p, _ in self.parts)

    def global_distance(self, stats: torch.Tensor) -> torch.Tensor:
        """`[N]`: interval-mean distance to the closest 30 % of the memory's statistics."""
        return reference_distance(stats, torch.stack([p.stats for _, p, _ in self.parts]))

    def profile(self) -> Profile | None:
        """The memory's own calibration (module doc); None before MIN_PROFILE parts."""
        if len(self.parts) < MIN_PROFILE:
            return None
        parts = [p for _, p, _ in self.parts]
        glob = np.array([p.gdist for p in parts])
        return Profile(torch.stack([p.patches for p in parts]), np.array([p.image for p in parts]),
                       None if np.isnan(glob).any() else glob)  # fmt: skip

    def observe(self, sources: Sequence[str], parts: Sequence[Part]) -> None:
        self.observed.update(zip(sources, parts))
