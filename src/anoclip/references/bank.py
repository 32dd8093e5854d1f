"""Banks of known-good images: memory banks of normal patch features per (layer, radius).

Few-shot scoring (PatchCore / WinCLIP+ style): each query patch's distance to its nearest
normal patch, averaged over the (layer, radius) feature sets of patches.py:

    b(i, p) = mean_{l,r} min_{m ∈ M_{l,r}} ½(1 − ⟨f_{l,r}(i, p), m⟩)

The search is exact and chunked over both queries and bank, so memory holds at most one
`[q, m]` similarity block of `chunk_elems` floats. From about 10⁵ patches an approximate
search pays (benchmarks/bank_search.py: faiss IVF, nprobe 8, 9× at 10⁵ and 28× at 10⁶
patches, recall@1 ≥ 0.99, image scores within 3e-7): `search="ivf"` (Settings.bank_search,
extra `ann`). :func:`combine` fuses bank scores with mutual scores.

A bank file stores the features with what they depend on: the visual backbone name, the
layers (stages), the radii, the grid and a settings fingerprint (a flat dict of the settings
the features depend on: image size, mean/std, checkpoint...). :meth:`NormalBank.load` with
`expect` refuses a bank whose fields differ, naming each differing field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from anoclip.data.tensor_files import TensorFileError, load_tensors
from anoclip.errors import BankError
from anoclip.extras import require
from anoclip.references.patches import Key

FORMAT = "anoclip-bank/1"
DEFAULT_CHUNK_ELEMS = 2**24  # 16 M floats = 64 MB per similarity block
BANK_ROWS = 1024  # bank rows per similarity block (benchmarks/bank_search.py)
IVF_MIN_PATCHES = 50_000  # below: exact search < 0.2 s per image and feature set (bank_search.py)


@dataclass(frozen=True)
class BankMeta:
    """What a bank's features depend on; two banks are interchangeable when these are equal."""

    backbone: str
    layers: tuple[int, ...]
    radii: tuple[int, ...]
    grid: tuple[int, int]
    fingerprint: dict[str, Any] = field(default_factory=dict)
    fusion: str = "mean"  # "mean": one feature set per (layer, radius); "concat": per radius

    def keys(self) -> list[Key]:
        """The (layer, radius) feature sets a bank with this metadata holds."""
        if self.fusion == "concat":
            return [(-1, r) for r in sorted(self.radii)]
        return sorted((li, r) for li in range(len(self.layers)) for r in self.radii)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BankMeta:
        d = json.loads(text)
        return cls(
            backbone=d["backbone"],
            layers=tuple(d["layers"]),
            radii=tuple(d["radii"]),
            grid=(int(d["grid"][0]), int(d["grid"][1])),
            fingerprint=dict(d["fingerprint"]),
            fusion=d.get("fusion", "mean"),
        )


def differences(found: BankMeta, expected: BankMeta) -> list[str]:
    """Each differing field as "name found vs expected" (fingerprint entries one by one)."""
    # compared as stored (JSON round trip: tuples become lists)
    a, b = json.loads(found.to_json()), json.loads(expected.to_json())
    names = ("backbone", "layers", "radii", "grid", "fusion")
    out = [f"{n} {a[n]} vs {b[n]}" for n in names if a[n] != b[n]]
    fa, fb = a["fingerprint"], b["fingerprint"]
    for n in sorted(set(fa) | set(fb)):
        va, vb = fa.get(n, "<absent>"), fb.get(n, "<absent>")
        if va != vb:
            out.append(f"fingerprint.{n} {va} vs {vb}")
    return out


def refuse_other(found: BankMeta, expected: BankMeta, name: str = "the bank") -> None:
    """Raise :class:`BankError` naming each differing field unless `found` == `expected`."""
    diff = differences(found, expected)
    if diff:
        raise BankError(f"{name} was built with other settings (bank vs now): {'; '.join(diff)}")


def ivf_distance(queries: torch.Tensor, index: Any, nprobe: int) -> torch.Tensor:
    """Approximate nearest-neighbour distances `[Q]` from a faiss IVF inner-product index
    (:func:`build_ivf`): the `nprobe` lists nearest to each query are searched exactly."""
    index.nprobe = int(nprobe)
    sims, _ = index.search(queries.float().contiguous().numpy(), 1)
    return (0.5 * (1 - torch.from_numpy(sims[:, 0]))).clamp_(0.0, 1.0)


def build_ivf(bank: torch.Tensor) -> Any:
    """A faiss `IndexIVFFlat` (inner product) over the unit-norm bank `[M, C]`: nlist =
    4·√M lists, k-means on ≤ 64 sampled patches per list (benchmarks/bank_search.py)."""
    faiss = require("faiss", "ann", "bank_search='ivf'")
    x = bank.float().contiguous().numpy()
    dim, nlist = x.shape[1], max(1, int(4 * math.sqrt(x.shape[0])))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = 64
    index.cp.seed = 0
    index.train(x)
    index.add(x)
    return index


def nearest_distance(
    queries: torch.Tensor, bank: torch.Tensor, chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> torch.Tensor:
    """Exact nearest-neighbour distances `[Q]` = min_m ½(1 − ⟨q, b_m⟩) for L2-normalised
    queries `[Q, C]` and bank `[M, C]`, chunked so each similarity block has ≤ chunk_elems:
    at most BANK_ROWS bank rows per block, so the matmul stays wide on the query side
    (a whole 10⁶-patch bank per block left 17 queries per matmul: 5× slower)."""
    q_total, m_total = queries.shape[0], bank.shape[0]
    m_chunk = max(1, min(m_total, BANK_ROWS, chunk_elems))
    q_chunk = max(1, chunk_elems // m_chunk)
    out = torch.empty(q_total)
    for qs in range(0, q_total, q_chunk):
        q = queries[qs : qs + q_chunk].float()
        best = torch.full((q.shape[0],), float("-inf"))
        for ms in range(0, m_total, m_chunk):
            sim = q @ bank[ms : ms + m_chunk].float().T
            best = torch.maximum(best, sim.amax(dim=1))
        out[qs : qs + q.shape[0]] = 0.5 * (1 - best)
    return out.clamp_(0.0, 1.0)


@dataclass
class NormalBank:
    """Normal patch features per (layer, radius) `[M, C_l]` and their metadata; the images'
    global features `[B, D]` and statistics `[B, D']` (None in older bank files); profiles:
    the leave-one-out calibration per map size (profile.py), shared with leave_out copies."""

    meta: BankMeta
    features: dict[Key, torch.Tensor]
    _indexes: dict[Key, Any] = field(default_factory=dict, repr=False, compare=False)
    glob: torch.Tensor | None = None
    stats: torch.Tensor | None = None
    profiles: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        features: Mapping[Key, torch.Tensor],
        meta: BankMeta,
        glob: torch.Tensor | None = None,
        stats: torch.Tensor | None = None,
    ) -> NormalBank:
        """From patch features {(l, r): `[B, L, C_l]`} of B normal images, their global
        features `[B, D]` (:mod:`anoclip.references.familiarity`) and image statistics."""
        keys, want = sorted(features), meta.keys()
        if keys != want:
            raise BankError(f"bank features {keys} do not match the metadata's {want}")
        flat = {k: features[k].reshape(-1, features[k].shape[-1]).float() for k in keys}
        as_float = lambda t: None if t is None else t.float()  # noqa: E731
        return cls(meta, flat, glob=as_float(glob), stats=as_float(stats))

    @property
    def size(self) -> int:  # normal patches per feature set
        return next(iter(self.features.values())).shape[0]

    @property
    def num_images(self) -> int:
        """Number of images in the bank (each holds h·w patches of the bank's grid)."""
        return self.size // (self.meta.grid[0] * self.meta.grid[1])

    def leave_out(self, index: int) -> NormalBank:
        """The bank without its `index`-th image (build/add order), to score it as a new good
        part; copies share `profiles`, whose "bank" is the bank they came from."""
        self.profiles.setdefault("bank", self)
        per = self.meta.grid[0] * self.meta.grid[1]
        if not 0 <= index < self.num_images:
            raise IndexError(f"bank image {index} of {self.num_images}")
        keep = torch.ones(self.size, dtype=torch.bool)
        keep[index * per : (index + 1) * per] = False
        but = lambda t: None if t is None else torch.cat([t[:index], t[index + 1 :]])  # noqa: E731
        kept, other = {k: v[keep] for k, v in self.features.items()}, but(self.stats)
        return NormalBank(self.meta, kept, glob=but(self.glob), stats=other, profiles=self.profiles)

    def add(
        self,
        features: Mapping[Key, torch.Tensor],
        glob: torch.Tensor | None = None,
        stats: torch.Tensor | None = None,
    ) -> None:
        """Append the patches of more normal images {(l, r): `[B, L, C_l]`} (and their global
        features `[B, D]` and statistics; without them the bank's are dropped)."""
        if sorted(features) != sorted(self.features):
            raise BankError("added features do not have the bank's (layer, radius) sets")
        for k, v in features.items():
            self.features[k] = torch.cat([self.features[k], v.reshape(-1, v.shape[-1]).float()])
        both = lambda a, b: None if a is None or b is None else torch.cat([a, b])  # noqa: E731
        self.glob, self.stats, self.profiles = both(self.glob, glob), both(self.stats, stats), {}
        self._indexes.clear()

    def scores(
        self,
        features: Mapping[Key, torch.Tensor],
        chunk_elems: int = DEFAULT_CHUNK_ELEMS,
        search: str = "exact",
        nprobe: int = 8,
    ) -> torch.Tensor:
        """Query patch features {(l, r): `[N, L, C_l]`} -> bank scores `[N, L]` in [0, 1].

        search: "exact" (:func:`nearest_distance`), or "ivf" (:func:`ivf_distance`, faiss,
        extra `ann`) when the bank holds at least IVF_MIN_PATCHES patches; the index is
        built on first use and kept with this bank (not saved with it)."""
        if sorted(features) != sorted(self.features):
            raise BankError(
                f"query features {sorted(features)} do not match the bank's {sorted(self.features)}"
            )
        if search not in ("exact", "ivf"):
            raise ValueError(f"unknown bank search {search!r}: use exact or ivf")
        total = None
        for k, q in features.items():
            n, length, c = q.shape
            flat = q.reshape(-1, c)
            if search == "ivf" and self.size >= IVF_MIN_PATCHES:
                if k not in self._indexes:
                    self._indexes[k] = build_ivf(self.features[k])
                d = ivf_distance(flat, self._indexes[k], nprobe)
            else:
                d = nearest_distance(flat, self.features[k], chunk_elems)
            d = d.view(n, length)
            total = d if total is None else total + d
        assert total is not None
        return total / len(features)

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank (features as float32 or as stored, metadata as JSON) to `path`."""
        payload = {
            "format": FORMAT,
            "meta": self.meta.to_json(),
            "features": {f"{li}_{r}": v.contiguous() for (li, r), v in self.features.items()},
        }
        for name in ("glob", "stats"):
            if getattr(self, name) is not None:
                payload[name] = getattr(self, name).contiguous()
        try:
            torch.save(payload, Path(path))
        except OSError as exc:
            raise BankError(f"cannot write bank {path}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike, expect: BankMeta | None = None) -> NormalBank:
        """Read a bank; with `expect`, refuse one built with different settings."""
        return read_bank(path, expect)


def read_bank(path: str | os.PathLike, expect: BankMeta | None = None) -> NormalBank:
    """A bank file (NormalBank.save) -> the bank; with `expect`, refuse one built with
    different settings (BankError naming the fields)."""
    p = Path(path)
    if not p.is_file():
        raise BankError(f"bank not found: {p}")
    try:
        payload = load_tensors(p)
    except TensorFileError as exc:
        raise BankError(f"{p} is not an anoclip bank: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BankError(f"{p} is not an anoclip bank ({FORMAT})")
    meta = BankMeta.from_json(payload["meta"])
    if expect is not None:
        refuse_other(meta, expect, f"bank {p}")
    feats = {}
    for name, v in payload["features"].items():
        li, r = name.split("_")
        feats[(int(li), int(r))] = v
    kept = {n: payload.get(n) for n in ("glob", "stats")}
    kept = {n: v if isinstance(v, torch.Tensor) else None for n, v in kept.items()}
    return NormalBank(meta, feats, **kept)


def combine(mutual: torch.Tensor, bank: torch.Tensor, how: str = "min") -> torch.Tensor:
    """Fuse mutual and bank patch scores (same shape): "mean" ½(m + b), "min" (a patch is
    normal if either source explains it), or "max"."""
    if how == "mean":
        return 0.5 * (mutual + bank)
    if how == "min":
        return torch.minimum(mutual, bank)
    if how == "max":
        return torch.maximum(mutual, bank)
    raise ValueError(f"unknown bank fusion {how!r}: use mean, min or max")
