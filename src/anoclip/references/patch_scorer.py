"""The patch scorer: visual references and banks of known-good images on MuSc-grade patch
features of any visual backbone (issue 10, [DESIGN]).

    Sample.visual `[B, 3, S_v, S_v]` --timm--> one map per stage `[B, C_l, h_l, w_l]`
    (or CLIP tokens `[B, L, C]` of `ref_layers` --tokens_to_map--> `[B, C, h, w]`; by default
    the original path's residual-stream tokens of the quarter-depth blocks, as MuSc)
      -> patches.patch_features: LayerNorm over C, r×r mean (r ∈ patch_radii), the
         common grid (patch_grid: a stride in input pixels, or a layer's grid), L2
         (-> concat_layers when layer_fusion="concat")
      -> PatchSet: {(l, r): `[B, L, C_k]`}, global features `[B, D]`, layout `[B, K]`

Patch scores `[N, L]` in [0, 1], averaged over the feature sets k = (l, r):

    mutual (dual, k, all)  s_mut(i, p)  = mean_k IM_{j ∈ R_i} min_q ½(1 − ⟨f_k(i, p), f_k(j, q)⟩)
    known-good bank        s_bank(i, p) = mean_k min_{m ∈ M_k} ½(1 − ⟨f_k(i, p), m⟩)
    both                   bank_combine(s_mut, s_bank)  ("min": normal if either explains it)

R_i are the `refs` nearest other images by global cosine (dual: 1; "all": the `refs_cap`
nearest), skipping near-duplicates of the query (layout-descriptor cosine >
duplicate_threshold) and, by the series screen (series.py, `series_ratio`), images that explain
it far better than its other close images do (the same part shot again, a series with one
defect) where they would make up half of what IM averages; images that have such are noted
"near_identical". IM is `ref_agg`.
Maps: bilinear to the image's model resolution `[H', W']`, Gaussian σ = `gaussian_sigma` px;
the visual image score is the map's maximum, RsCIN-smoothed over the set with `rscin`.
With `fusion="visual"` map and score are the visual ones alone (no text branch is computed);
otherwise they are fused with the CLIP text branch exactly as token_scorer.py does.

The search is exact and chunked (references.nn_distances, bank.nearest_distance), so memory
holds one similarity block at a time. The patch scorer runs whenever the visual backbone is
not "clip", fusion is "visual" or a bank is given; otherwise token_scorer.py's V-V token path
runs unchanged (the golden and parity numbers). :class:`PatchScorer` is this scorer for the
scoring loop (:mod:`anoclip.references.scorer`): a batch's :class:`PatchFeatures` are its
:class:`PatchSet` and, unless fusion is "visual", its text-branch features.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anoclip.clip.backbone import Backbone
from anoclip.clip.encoder import VVEncoder
from anoclip.clip.scoring import image_scores, tile_maps
from anoclip.data.preprocess import VisualPreprocess, stitch
from anoclip.errors import AnoclipWarning, ImageDecodeError, UsageError
from anoclip.extras import embedded_weights
from anoclip.notes import GLOBAL_CHANGE, NEAR_IDENTICAL, UNFAMILIAR
from anoclip.records import Failure, Features, Sample, Scored
from anoclip.references.bank import BankMeta, NormalBank, combine, refuse_other
from anoclip.references.border import equalise
from anoclip.references.familiarity import unfamiliar
from anoclip.references.fusion import fuse_maps, fuse_scores, moments
from anoclip.references.global_score import fuse as fuse_global
from anoclip.references.global_score import image_statistics
from anoclip.references.memory import Memory, Part
from anoclip.references.neighbours import duplicate_mask, nearest_references, rscin
from anoclip.references.patches import (
    common_grid,
    concat_layers,
    global_features,
    layout_descriptor,
    mutual_scores,
    patch_features,
    tokens_to_map,
)
from anoclip.references.profile import Profile, bank_profile, global_distance, visual_map
from anoclip.references.scorer import Tick
from anoclip.references.series import series_scores
from anoclip.references.timm_backbone import VisualBackbone, load_visual_backbone
from anoclip.references.token_scorer import ScoringContext, kept, score_each
from anoclip.settings import CLIP_VISUAL, RefCount, Settings


def uses_patch_scorer(settings: Settings, bank: NormalBank | None = None) -> bool:
    """Whether the patch scorer runs (else token_scorer.py's V-V token path, unchanged)."""
    return settings.patch_scorer or bank is not None


@dataclass
class PatchSet:
    """Patch features of N images on one grid (h, w), L = h·w.

    feats: {(l, r): `[N, L, C_k]`} L2-normalised; glob: `[N, D]` global features (reference
    choice, RsCIN); layout: `[N, K]` position-aware descriptors (near-duplicate guard);
    stats: `[N, D']` image statistics (the global branch, global_score.py; None: off)."""

    feats: dict[tuple[int, int], torch.Tensor]
    glob: torch.Tensor
    layout: torch.Tensor
    grid: tuple[int, int]
    stats: torch.Tensor | None = None

    @staticmethod
    def cat(parts: Sequence[PatchSet]) -> PatchSet:
        """Several batches as one set (images concatenated in order)."""
        keys = parts[0].feats
        stats = [p.stats for p in parts]
        return PatchSet(
            {k: torch.cat([p.feats[k] for p in parts]) for k in keys},
            torch.cat([p.glob for p in parts]),
            torch.cat([p.layout for p in parts]),
            parts[0].grid,
            None if any(x is None for x in stats) else torch.cat(stats),
        )


class VisualSource:
    """What computes the patch scorer's features: a timm backbone (its own input per image,
    `Sample.visual`) or the CLIP encoder's `ref_features` tokens of `ref_layers` (`backbone`
    and `encoder` None: no CLIP model, `Settings.needs_clip`)."""

    def __init__(
        self,
        settings: Settings,
        backbone: Backbone | None,
        encoder: VVEncoder | None,
        device: torch.device,
    ) -> None:
        self.settings, self.clip, self.encoder = settings, backbone, encoder
        self.timm: VisualBackbone | None = None
        if settings.visual_backbone != CLIP_VISUAL:
            weights = settings.visual_pretrained or embedded_weights(settings.visual_backbone)
            assert weights is not None  # Settings validates it
            self.timm = load_visual_backbone(
                settings.visual_backbone,
                weights,
                device,
                strides=settings.visual_strides,
                image_size=settings.visual_size or None,
            )
        self._grid: tuple[int, int] | None = None

    @property
    def preprocess(self) -> VisualPreprocess | None:
        """The second input's preprocessing (None: the CLIP tiles serve)."""
        return None if self.timm is None else self.timm.preprocess

    def layer_maps(self, samples: Sequence[Sample]) -> list[torch.Tensor]:
        """One feature map per layer `[B, C_l, h_l, w_l]` for the samples."""
        if self.timm is not None:
            x = torch.stack([smp.visual for smp in samples])  # type: ignore[misc]
            return self.timm.encode(x)
        if any(smp.layout.num_tiles != 1 for smp in samples):
            raise UsageError(
                "the patch scorer on CLIP tokens needs one tile per image (tiling=none)"
            )
        kind, layers = self.settings.ref_tokens(self.encoder.depth, patch_scorer=True)
        x = torch.cat([smp.tiles for smp in samples]).to(self.clip.device)
        vv = layers if kind == "vv" else ()
        ori = layers if kind == "ori" else ()
        with torch.inference_mode():
            enc = self.encoder(x, vv, ori, with_vv=bool(vv))
        # "ori" as MuSc: the residual stream itself (patch_features LayerNorms it), not the
        # LN_post + projection the token path compares with text
        source = enc.vv if vv else enc.residual
        return [tokens_to_map(source[layer].float(), enc.grid) for layer in layers]

    def patch_set(self, samples: Sequence[Sample]) -> PatchSet:
        """Samples -> their :class:`PatchSet` (on the CPU)."""
        s = self.settings
        with torch.inference_mode():
            maps = self.layer_maps(samples)
            size = self.input_size()
            feats = patch_features(maps, s.patch_radii, s.patch_grid, input_size=size)
            if s.layer_fusion == "concat":
                feats = concat_layers(feats)
            grid = common_grid(maps, s.patch_grid, size)
            self._grid = grid
            return PatchSet(
                {k: v.cpu() for k, v in feats.items()},
                global_features(maps).cpu(),
                layout_descriptor(maps, grid).cpu(),
                grid,
                image_statistics(maps).cpu(),
            )

    def grid(self) -> tuple[int, int]:
        """The common grid of the patch features (one blank input when not yet known)."""
        if self._grid is None:
            if self.timm is not None:
                h, w = self.timm.preprocess.size
                maps = self.timm.encode(torch.zeros(1, 3, h, w))
            else:
                n = len(self.settings.ref_tokens(self.encoder.depth, patch_scorer=True)[1])
                maps = [torch.zeros(1, 1, *self.encoder.grid)] * n
            self._grid = common_grid(maps, self.settings.patch_grid, self.input_size())
        return self._grid

    def input_size(self) -> tuple[int, int]:
        """(H, W) of what the feature source sees (a stride grid is relative to it)."""
        if self.timm is not None:
            return self.timm.preprocess.size
        return self.clip.image_size, self.clip.image_size

    def bank_meta(self, object_name: str) -> BankMeta:
        """What a bank's features depend on (a loaded bank must match it)."""
        s = self.settings
        finger: dict[str, Any] = {"object": object_name, "patch_grid": s.patch_grid}
        if self.timm is not None:
            p = self.timm.preprocess
            finger.update(
                weights=str(Path(self.timm.checkpoint).resolve()), input=list(p.size),
                mean=list(p.mean), std=list(p.std), interpolation=p.interpolation,
            )  # fmt: skip
            name, layers = self.timm.name, tuple(s.visual_strides)
        else:
            kind, layers = s.ref_tokens(self.encoder.depth, patch_scorer=True)
            bb = self.clip
            weights = Path(bb.pretrained)
            finger.update(
                weights=str(weights.resolve()) if weights.is_file() else bb.pretrained,
                input=[bb.image_size, bb.image_size], mean=list(bb.mean), std=list(bb.std),
                ref_features=kind, vv_start_layer=s.vv_start_layer,
                tokens="residual" if kind == "ori" else "projected",
            )  # fmt: skip
            name = f"clip:{bb.name}"
        return BankMeta(name, tuple(layers), tuple(s.patch_radii), self.grid(), finger,
                        s.layer_fusion)  # fmt: skip


def bank_from(
    visual: VisualSource, batches: Iterable[Sequence[Sample | Failure]], object_name: str
) -> NormalBank:
    """A bank of the patch features of known-good images, batch by batch (raises
    ImageDecodeError naming an unreadable one)."""
    parts: list[PatchSet] = []
    for batch in batches:
        for b in batch:
            if isinstance(b, Failure):
                raise ImageDecodeError(f"bank image {b.source}: {b.reason}")
        parts.append(visual.patch_set(batch))  # type: ignore[arg-type]
    found = PatchSet.cat(parts)
    return NormalBank.build(found.feats, visual.bank_meta(object_name), found.glob, found.stats)


@dataclass
class PatchFeatures:
    """A batch's features for the patch scorer: its patches, and its text-branch features
    (None with fusion="visual")."""

    patches: PatchSet
    text: Features | None

    @staticmethod
    def cat(parts: Sequence[PatchFeatures]) -> PatchFeatures:
        """Several batches as one set (images concatenated in order)."""
        texts = [p.text for p in parts if p.text is not None]
        patches = PatchSet.cat([p.patches for p in parts])
        return PatchFeatures(patches, Features.cat(texts) if texts else None)


class PatchScorer:
    """The patch scorer (module doc) for the scoring loop: alone against the `bank`, or a
    set mutually (with the bank when given). `text` encodes a batch's text branch (None:
    fusion="visual"). Refuses fusion="visual" without visual references and a bank built
    with other settings; warns about the token-path settings it does not apply."""

    def __init__(
        self,
        visual: VisualSource,
        context: ScoringContext,
        object_name: str,
        bank: NormalBank | None = None,
        text: Callable[[Sequence[Sample]], Features] | None = None,
    ) -> None:
        s, refs = context.settings, context.refs
        if not refs and bank is None and s.fusion == "visual":
            raise UsageError("fusion=visual needs visual references: mode dual/mutual or a bank")
        unused = unused_settings(s, refs)
        if unused:
            warnings.warn(
                f"{', '.join(unused)}: not used by the patch scorer (it picks references by "
                "global feature and skips near-duplicates; see duplicate_threshold)",
                AnoclipWarning,
                stacklevel=4,
            )
        if bank is not None:
            refuse_other(bank.meta, visual.bank_meta(object_name))
        self.visual, self.context, self.bank, self.text = visual, context, bank, text

    def features(self, samples: Sequence[Sample]) -> PatchFeatures:
        text = self.text(samples) if self.text is not None else None
        return PatchFeatures(self.visual.patch_set(samples), text)

    def score_each(self, samples: Sequence[Sample], feats: PatchFeatures) -> list[Scored]:
        return score_patches(samples, feats.patches, feats.text, self.context, self.bank)

    def keep(self, samples: Sequence[Sample], feats: PatchFeatures, set_size: int) -> PatchFeatures:
        text = None if feats.text is None else kept(feats.text, set_size, samples)
        return PatchFeatures(feats.patches, text)

    def cat(self, parts: Sequence[PatchFeatures]) -> PatchFeatures:
        return PatchFeatures.cat(parts)

    def score_set(
        self, samples: Sequence[Sample], feats: PatchFeatures, tick: Tick | None = None
    ) -> list[Scored]:
        return score_patches(samples, feats.patches, feats.text, self.context, self.bank, tick)


def patch_scores(
    patches: PatchSet,
    refs: RefCount,
    bank: NormalBank | None,
    settings: Settings,
    tick: Tick | None = None,
    memory: Memory | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual patch scores `[N, L]`: mutual (refs ≠ 0), against a rolling `memory` of earlier
    parts (memory.py; refs = 0), bank, or a mutual part and the bank combined; and `[N]`
    bool, the images with near-identical images in the set or memory (series.py's screen)."""
    s = settings
    mutual, near = None, torch.zeros(patches.glob.shape[0], dtype=torch.bool)
    if refs:
        mutual, near, _ = mutual_part(patches, refs, s, tick)
    elif memory is not None and len(memory):
        mutual, near = memory.patch_scores(patches.feats, patches.glob, patches.layout, s)
    if bank is None:
        assert mutual is not None, "no references and no bank"
        return mutual, near
    own = bank.scores(patches.feats, search=s.bank_search, nprobe=s.bank_nprobe)
    return (own if mutual is None else combine(mutual, own, s.bank_combine)), near


def mutual_part(
    patches: PatchSet, refs: RefCount, settings: Settings, tick: Tick | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Mutual patch scores `[N, L]` against the `refs` most similar others (skipping layout
    near-duplicates), through the series screen unless `series_ratio` = 0 and "all" is not
    capped; with the `[N]` near-identical flags and each image's references."""
    s = settings
    exclude = None
    if s.duplicate_threshold < 1:
        exclude = duplicate_mask(patches.layout, s.duplicate_threshold)
    cap = s.refs_cap or None
    if s.series_ratio == 0 and (refs != "all" or cap is None):
        chosen = nearest_references(patches.glob, refs, exclude)
        none = torch.zeros(patches.glob.shape[0], dtype=torch.bool)
        return mutual_scores(patches.feats, chosen, s.ref_agg, tick=tick), none, chosen
    found = series_scores(patches.feats, patches.glob, refs, s.ref_agg, exclude,
                          ratio=s.series_ratio, cap=cap, tick=tick)  # fmt: skip
    return found.scores, found.verdict.flags, found.references


def unused_settings(settings: Settings, refs: RefCount) -> list[str]:
    """Token-path settings the patch scorer does not apply (it picks references by global
    feature and guards against near-duplicates instead), as `name=value` for a warning."""
    s, out = settings, []
    if refs and s.ref_filter != "none":
        out.append(f"ref_filter={s.ref_filter}")
    if refs == 1 and s.pairing != "cls_nn":
        out.append(f"pairing={s.pairing}")
    return out


def mode_name(refs: RefCount, bank: NormalBank | None, memory: Memory | None = None) -> str:
    """ "dual", "mutual", "memory", "bank", or one of them "+bank"."""
    base = "" if not refs else "dual" if refs == 1 else "mutual"
    base = "memory" if memory is not None and not refs and len(memory) else base
    if bank is None:
        return base
    return f"{base}+bank" if base else "bank"


def score_patches(
    samples: Sequence[Sample],
    patches: PatchSet,
    text: Features | None,
    context: ScoringContext,
    bank: NormalBank | None = None,
    tick: Tick | None = None,
) -> list[Scored]:
    """The samples scored by the patch scorer (module doc), fused with the text branch when
    `text` is given (fusion ≠ "visual"). `context.refs` = 0 scores each image alone against
    the bank; a set mode with one image falls back to the bank, or to the text branch."""
    s = context.settings
    refs = context.refs
    memory = bank if isinstance(bank, Memory) else None
    bank = memory.bank if memory is not None else bank
    if refs and len(samples) < 2:
        warnings.warn(
            "dual/mutual mode needs at least two images; scoring the single image "
            + ("against the bank" if bank is not None else "in anoclip mode"),
            AnoclipWarning,
            stacklevel=2,
        )
        refs = 0
    if not refs and bank is None and not memory:
        if text is None:
            raise UsageError(
                "fusion=visual needs visual references: mode dual/mutual with two or more "
                "images, or a bank of known-good images"
            )
        return score_each(samples, text, context)
    raw, near = patch_scores(patches, refs, bank, s, tick, memory)
    profile = None  # each image alone: the memory's or the bank's calibration, when used
    if not refs and (s.border_depth > 0 or s.global_k > 0):
        profile = memory.profile() if memory is not None else None
        if profile is None and bank is not None:
            profile = bank_profile(bank, s, samples[0].layout.size)
    calibration = raw if profile is None else profile.patches  # no profile: depth 0 or a set
    vis = equalise(raw, calibration, patches.grid, s.border_depth)
    vis_maps = [
        visual_map(vis[i], patches.grid, smp.layout.size, s.gaussian_sigma)
        for i, smp in enumerate(samples)
    ]
    vis_max = torch.stack([m.max() for m in vis_maps])
    glob = global_distance(patches.stats, refs, bank, memory)
    if memory is not None:
        memory.observe([smp.source for smp in samples], parts_of(patches, raw, vis_max, glob))
    vis_max, changed = global_part(vis_max, glob, refs, s, profile)
    if text is None:
        maps, scores = [m.clamp(0.0, 1.0) for m in vis_maps], vis_max
    else:
        maps, scores = _fused(samples, vis_maps, vis_max, text, context)
    if s.rscin and refs:
        scores = rscin(scores, patches.glob)
    mode = mode_name(refs, bank, memory)
    odd = torch.zeros(len(samples), dtype=torch.bool)
    if bank is not None and bank.glob is not None:
        odd = unfamiliar(patches.glob, bank.glob)
    flags = ((UNFAMILIAR, odd), (NEAR_IDENTICAL, near), (GLOBAL_CHANGE, changed))
    notes = [tuple(n for n, on in flags if bool(on[i])) for i in range(len(samples))]
    return [
        Scored(smp, float(score), m.float().cpu(), mode, note)
        for smp, score, m, note in zip(samples, scores.tolist(), maps, notes)
    ]


def parts_of(
    patches: PatchSet, raw: torch.Tensor, image: torch.Tensor, glob: torch.Tensor | None
) -> list[Part]:
    """Each image as the rolling memory keeps it (memory.Part): its features and how it
    scored (patch scores `[L]` before the equaliser, visual image score, global distance)."""
    stats = patches.stats
    return [
        Part(
            {k: v[i] for k, v in patches.feats.items()},
            patches.glob[i],
            patches.layout[i],
            None if stats is None else stats[i],
            raw[i].clone(),
            float(image[i]),
            float("nan") if glob is None else float(glob[i]),
        )  # fmt: skip
        for i in range(raw.shape[0])
    ]


def global_part(
    vis_max: torch.Tensor,
    glob: torch.Tensor | None,
    refs: RefCount,
    settings: Settings,
    profile: Profile | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The visual image scores `[N]` with the global branch fused in (global_score.py): the
    global distances `glob` `[N]` on the scale of the set itself (refs ≠ 0) or of the
    calibration `profile` (the bank's leave-one-out, or the memory's); and `[N]` bool, the
    images whose score the global change raised. Unchanged when `global_k` = 0 or there
    are no image statistics."""
    none = torch.zeros(vis_max.shape[0], dtype=torch.bool)
    if settings.global_k <= 0 or glob is None:
        return vis_max, none
    if refs:
        image_cal, glob_cal = vis_max.numpy(), glob.numpy()
    else:
        if profile is None or profile.glob is None:
            return vis_max, none
        image_cal, glob_cal = profile.image, profile.glob
    return fuse_global(vis_max, glob, image_cal, glob_cal, settings.global_k)


def _fused(
    samples: Sequence[Sample],
    vis_maps: list[torch.Tensor],
    vis_max: torch.Tensor,
    text: Features,
    context: ScoringContext,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Maps and scores fused with the text branch at `fusion_temperature` (modes.py's rule;
    batch_z's moments over the given images)."""
    s = context.settings
    tau = s.fusion_temperature
    counts = [smp.layout.num_tiles for smp in samples]
    tiles = tile_maps(text.text_cos, text.grid, context.tile, tau, s.gaussian_sigma)
    text_maps = [stitch(t, smp.layout) for t, smp in zip(tiles.split(counts), samples)]
    stats = None
    if s.fusion == "batch_z":
        flat = lambda ms: torch.cat([m.flatten() for m in ms])  # noqa: E731
        stats = (moments(flat(text_maps)), moments(flat(vis_maps)))
    maps = [
        fuse_maps(t, v, s.fusion, s.fusion_alpha, stats).clamp(0.0, 1.0)
        for t, v in zip(text_maps, vis_maps)
    ]
    text_scores = image_scores(text.cls_cos, tau, counts)
    return maps, fuse_scores(text_scores, vis_max, s.fusion, s.fusion_beta)
