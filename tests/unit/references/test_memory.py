"""The rolling memory's scores against a float64 brute-force loop (references/memory.py)."""

from __future__ import annotations

import math

import numpy as np
import torch

from anoclip.references.bank import BankMeta
from anoclip.references.memory import Memory, Part
from anoclip.settings import Settings

L, C, KEYS = 6, 5, [(-1, 1), (-1, 3)]


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def part(gen: torch.Generator, glob: torch.Tensor | None = None) -> Part:
    feats = {k: unit(torch.randn(L, C, generator=gen)) for k in KEYS}
    g = torch.randn(8, generator=gen) if glob is None else glob
    return Part(feats, g, torch.randn(4, generator=gen), None, torch.rand(L), 0.1, math.nan)


def brute(query: dict, refs: list[Part], share: float = 0.3) -> np.ndarray:
    """s(p) = mean_k mean of the ⌈0.3·R⌉ smallest d_j(p), d_j(p) = min_q ½(1 − ⟨f, g⟩)."""
    out = np.zeros(L)
    for k in KEYS:
        q = query[k].double().numpy()
        for p in range(L):
            d = []
            for r in refs:
                g = r.feats[k].double().numpy()
                d.append(min(0.5 * (1 - float(q[p] @ g[j])) for j in range(L)))
            d = sorted(d)[: max(1, math.ceil(share * len(d)))]
            out[p] += np.mean(d) / len(KEYS)
    return out


def test_memory_scores_match_brute_force_and_roll():
    gen = torch.Generator().manual_seed(3)
    meta = BankMeta("x", (1,), (1, 3), (2, 3), fusion="concat")
    s = Settings(series_ratio=0)  # the screen off: every part is a reference
    mem = Memory(meta, None, size=5, refs="all")
    parts = [part(gen) for _ in range(8)]
    for i, p in enumerate(parts):
        gone = mem.admit(f"p{i}", p)
        assert gone == (f"p{i - 5}" if i >= 5 else None)  # the oldest leaves first
    assert mem.ids == [f"p{i}" for i in range(3, 8)]
    q = part(gen)
    feats = {k: v.unsqueeze(0) for k, v in q.feats.items()}
    got, near = mem.patch_scores(feats, q.glob[None], q.layout[None], s)
    np.testing.assert_allclose(got[0].numpy(), brute(q.feats, parts[3:]), atol=1e-5)
    assert not bool(near[0])


def test_series_screen_skips_a_reshot_part():
    """A part shot again (near-identical features) among the memory: flagged, and with
    dual references (k = 1) it is not the reference."""
    gen = torch.Generator().manual_seed(5)
    meta = BankMeta("x", (1,), (1, 3), (2, 3), fusion="concat")
    mem = Memory(meta, None, size=8, refs=1)
    q = part(gen)
    twin = Part(
        {k: unit(v + 0.01 * torch.randn(L, C, generator=gen)) for k, v in q.feats.items()},
        q.glob.clone(),
        torch.randn(4, generator=gen),
        None,
        torch.rand(L),
        0.1,
        math.nan,
    )
    others = [part(gen) for _ in range(6)]
    for i, p in enumerate([*others, twin]):
        mem.admit(f"p{i}", p)
    feats = {k: v.unsqueeze(0) for k, v in q.feats.items()}
    got, near = mem.patch_scores(feats, q.glob[None], q.layout[None], Settings())
    assert bool(near[0])
    assert float(got[0].min()) > 0.05  # not explained away by its twin (distance ~0)
