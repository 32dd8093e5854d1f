"""The data path of one loaded model: load -> encode -> score, each step a module.

    inputs -> loading (Sample: tiles `[T, 3, S, S]`, batches) -> Pipeline.scorer (one
        :class:`~anoclip.references.scorer.Scorer`) -> score_batches, the one loop:
        per batch scorer.features -> score_each (alone, as the batch comes) | keep
        (a set, pixels dropped) -> after the last batch cat -> score_set
        -> Scored, maps at model resolution `[H', W']` | Failure, in input order

Scorers: the token path (:class:`~anoclip.references.token_scorer.TokenScorer`: text
(TextBank, cached per object) -> encode (VVEncoder, CLS views, TTA: Features)) and the
patch scorer (:class:`~anoclip.references.patch_scorer.PatchScorer`: patch features of any
backbone, banks, the text branch unless fusion="visual").

:class:`Pipeline` holds what the steps need (backbone, encoder, settings, runtime, seed,
caches) and passes it to them explicitly; :class:`~anoclip.detector.Detector` adds the
public API on top (maps at the image's size, decisions).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
from tqdm.auto import tqdm

from anoclip.clip.backbone import Backbone, resolve_device
from anoclip.clip.encoder import VVEncoder
from anoclip.clip.features import check_precision, encode, tiles_of
from anoclip.clip.plain import PlainForward, plain_forward
from anoclip.clip.prompts import is_texture, prompt_name
from anoclip.clip.synth import Textures
from anoclip.clip.text import TextBank, TextCache
from anoclip.clip.tta import AdamState, TTAOverrides
from anoclip.data.images import ImageInput
from anoclip.data.loading import Preparer, as_list, batches
from anoclip.errors import UsageError
from anoclip.records import Failure, Features, Sample, Scored
from anoclip.references.bank import NormalBank
from anoclip.references.patch_scorer import PatchScorer, VisualSource, uses_patch_scorer
from anoclip.references.scorer import Scorer
from anoclip.references.token_scorer import ScoringContext, TokenScorer
from anoclip.settings import Mode, RefCount, Runtime, Settings, ref_count, tta_kind

SET_BAR = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]"


class ClipParts:
    """The CLIP model's part of the data path (none without a CLIP model): the backbone,
    the text embeddings per object, the 21 views' tower and the encode step."""

    backbone: Backbone | None
    encoder: VVEncoder | None
    settings: Settings
    runtime: Runtime
    seed: int
    device: torch.device
    _text: TextCache
    _adam_carry: dict[str, AdamState]  # AnoVL quirk mode only
    _textures: Textures
    _plain_forward: PlainForward | None  # built on first use

    @property
    def clip(self) -> Backbone:
        """The CLIP backbone (UsageError when this pipeline has none)."""
        if self.backbone is None:
            raise UsageError("no CLIP model was loaded: fusion='visual' on a timm backbone")
        return self.backbone

    def _plain(self) -> PlainForward | None:
        """The 21 augmented views' tower (:mod:`anoclip.clip.plain`), built once when needed."""
        if self.settings.image_score != "cls_aug22":
            return None
        if self._plain_forward is None:
            rt = self.runtime
            self._plain_forward = plain_forward(self.clip.model.visual, rt.precision,
                                                self.device, rt.view_engine)  # fmt: skip
        return self._plain_forward

    def text_bank(self, object_name: str) -> TextBank:
        """The (cached) prompt-ensemble embeddings for `object_name`."""
        s = self.settings
        name = prompt_name(object_name, s.class_names)
        texture = is_texture(object_name, s.domain)
        return self._text.get(self.clip, name, texture, s.text_ensemble, s.text_tokens)

    def encode(
        self,
        samples: Sequence[Sample],
        bank: TextBank,
        tta: bool | str = True,
        *,
        refs: bool = False,
        overrides: TTAOverrides | None = None,
    ) -> Features | None:
        """Encoder, text branch and TTA for the tiles of `samples` (None for no samples)."""
        if not samples:
            return None
        kind = tta_kind(tta)
        carry = None
        if not self.settings.reset_optimizer_state:
            carry = self._adam_carry.setdefault(f"{bank.name}|{kind}", AdamState([], []))
        assert self.encoder is not None, "no CLIP model"
        return encode(
            self.clip, self.encoder, tiles_of(samples, self.device), bank, self.settings,
            seed=self.seed, tta=kind, precision=self.runtime.precision, refs=refs,
            overrides=overrides, carry=carry, textures=self._textures, plain=self._plain(),
        )  # fmt: skip


class Pipeline(ClipParts):
    """One loaded model and its data path (see the module docstring). backbone None: no
    CLIP model (fusion="visual" on a timm backbone, `Settings.needs_clip`)."""

    def __init__(
        self, backbone: Backbone | None, settings: Settings, runtime: Runtime, seed: int
    ) -> None:
        self.backbone, self.settings, self.runtime, self.seed = backbone, settings, runtime, seed
        self.device = backbone.device if backbone else resolve_device(runtime.device)
        check_precision(self.device, runtime.precision)
        self.encoder = None
        if backbone is not None:
            settings.token_layers(backbone.depth)  # validates layers early
            self.encoder = VVEncoder(backbone.model.visual, settings.vv_start_layer)
        self.visual = VisualSource(settings, backbone, self.encoder, self.device)
        self._preparer = preparer(backbone, self.visual, settings)
        self.image_size = self._preparer.size  # S: the maps' model resolution
        self._text = TextCache()
        self._adam_carry: dict[str, AdamState] = {}  # AnoVL quirk mode only
        self._textures = Textures(settings.synth_textures)
        self._plain_forward: PlainForward | None = None  # built on first use

    def prepare(self, item: ImageInput, index: int = 0) -> Sample:
        """Decode and preprocess one input (raises :class:`ImageDecodeError`)."""
        return self._preparer.prepare(item, index)

    def prepared(
        self, items: Sequence[ImageInput], todo: Sequence[int]
    ) -> Iterator[list[Sample | Failure]]:
        """Batches of the prepared `items[i]` for i in `todo`, in order (failures in place)."""
        rt = self.runtime
        pin = self.device.type == "cuda"
        return batches(self._preparer, items, todo, rt.batch_size, rt.workers, pin)

    def iter_scored(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool | str = True,
        *,
        mode: Mode = "anoclip",
        refs: int | str | None = None,
        progress: bool = False,
        skip: Iterable[int] = (),
        bank: NormalBank | None = None,
    ) -> Iterator[Scored | Failure]:
        """The data path: load -> encode -> score each image alone, or the set together.
        Yields :class:`Scored` (maps at model resolution) or :class:`Failure`; indices in
        `skip` are not processed. bank: known-good patch features (:meth:`build_bank`);
        with it, a timm visual backbone or fusion="visual" the patch scorer runs
        (:mod:`anoclip.references.patch_scorer`)."""
        num_refs = ref_count(mode, refs)
        scorer = self.scorer(object_name, tta, num_refs, bank)
        items = as_list(images)
        skipped = set(skip)
        todo = [i for i in range(len(items)) if i not in skipped]
        stream = self.prepared(items, todo)
        yield from score_batches(
            scorer, stream, len(todo), together=bool(num_refs), progress=progress, desc=object_name
        )

    def scorer(
        self, object_name: str, tta: bool | str, refs: RefCount, bank: NormalBank | None
    ) -> Scorer:
        """The scorer for `object_name` with `refs` references per image (0: alone): the patch
        scorer with a `bank`, a timm visual backbone or fusion="visual", else the token path."""
        context = ScoringContext(self.settings, self.image_size, self.seed, refs, self.device)
        if not uses_patch_scorer(self.settings, bank):
            encode = partial(
                self.encode, bank=self.text_bank(object_name), tta=tta, refs=bool(refs)
            )
            return TokenScorer(encode, context)
        text = None  # fusion="visual": the visual map and score alone
        if self.settings.fusion != "visual":
            text = partial(self.encode, bank=self.text_bank(object_name), tta=tta)
        return PatchScorer(self.visual, context, object_name, bank, text)


def preparer(backbone: Backbone | None, visual: VisualSource, settings: Settings) -> Preparer:
    """Decoding + preprocessing for the models that run: CLIP tiles (and the visual
    backbone's input), or only the visual input at its own size (no CLIP model)."""
    if backbone is not None:
        return Preparer(backbone.image_size, backbone.mean, backbone.std, settings.tiling,
                        visual.preprocess)  # fmt: skip
    prep = visual.preprocess
    assert prep is not None, "no CLIP model needs a visual backbone"
    return Preparer(max(prep.size), prep.mean, prep.std, "none", prep, tiles=False)


def score_batches(
    scorer: Scorer,
    stream: Iterable[Sequence[Sample | Failure]],
    total: int,
    *,
    together: bool,
    progress: bool = False,
    desc: str | None = None,
) -> Iterator[Scored | Failure]:
    """The scoring loop: each batch's features (:meth:`Scorer.features`) scored alone as it
    comes, its failures in their places; or, `together`, kept (pixels dropped) until all
    `total` images are read, failures yielded as they come, then the set scored at once."""
    kept: list[Sample] = []
    parts: list[Any] = []
    with tqdm(total=total, disable=not progress, unit="img", desc=desc) as bar:
        for batch in stream:
            samples = [b for b in batch if isinstance(b, Sample)]
            if not together:
                scored = scorer.score_each(samples, scorer.features(samples)) if samples else []
                yield from _in_order(batch, scored)
            else:
                yield from (b for b in batch if isinstance(b, Failure))
                if samples:
                    parts.append(scorer.keep(samples, scorer.features(samples), total))
                    kept += _without_pixels(samples)
            bar.update(len(batch))
    if kept:
        with tqdm(total=len(kept), disable=not progress, desc=f"{desc or 'set'}: scoring the set",
                  bar_format=SET_BAR) as bar:  # fmt: skip
            tick = lambda k: bar.update(min(k, bar.total - bar.n))  # noqa: E731 (float sums overshoot)
            scored = scorer.score_set(kept, scorer.cat(parts), tick)
        yield from scored


def _without_pixels(samples: list[Sample]) -> list[Sample]:
    """The samples, their tiles and visual input dropped (a kept set needs no pixels)."""
    for smp in samples:
        smp.tiles, smp.visual = smp.tiles[:0], None
    return samples


def _in_order(batch: Sequence[Sample | Failure], scored: list[Scored]) -> Iterator:
    """The batch's failures and scored images, in the batch's order."""
    results = iter(scored)
    for item in batch:
        yield item if isinstance(item, Failure) else next(results)
