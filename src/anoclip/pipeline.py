"""The data path of one loaded model: load -> encode -> score, each step a module.

    inputs -> loading (Sample: tiles `[T, 3, S, S]`) -> text (TextBank, cached per object)
        -> encode (VVEncoder, CLS views, TTA: Features) -> modes (score_each alone |
        SetStore + score_set together: Scored, maps at model resolution `[H', W']`)

:class:`Pipeline` holds what the steps need (backbone, encoder, settings, runtime, seed,
caches) and passes it to them explicitly; :class:`~anoclip.detector.Detector` adds the
public API on top (maps at the image's size, decisions).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from anoclip.clip.backbone import Backbone
from anoclip.clip.encoder import VVEncoder
from anoclip.clip.features import check_precision, encode, tiles_of
from anoclip.clip.plain import PlainForward, plain_forward
from anoclip.clip.prompts import is_texture, prompt_name
from anoclip.clip.synth import Textures
from anoclip.clip.text import TextBank, TextCache
from anoclip.clip.tta import AdamState, TTAOverrides
from anoclip.data.images import ImageInput
from anoclip.data.loading import Preparer, as_list, batches
from anoclip.decide.decisions import normal_items
from anoclip.errors import AnoclipWarning, BankError, ImageDecodeError, UsageError
from anoclip.records import Failure, Features, Sample, Scored
from anoclip.references.bank import NormalBank, differences
from anoclip.references.patch_scorer import (
    PatchSet,
    VisualSource,
    score_patches,
    unused_settings,
    uses_patch_scorer,
)
from anoclip.references.token_scorer import ScoringContext, SetStore, score_each, score_set
from anoclip.settings import Mode, Runtime, Settings, fingerprint, ref_count, tta_kind


class Pipeline:
    """One loaded model and its data path (see the module docstring)."""

    def __init__(self, backbone: Backbone, settings: Settings, runtime: Runtime, seed: int):
        self.backbone, self.settings, self.runtime, self.seed = backbone, settings, runtime, seed
        settings.token_layers(backbone.depth)  # validates layers early
        check_precision(backbone.device, runtime.precision)
        self.encoder = VVEncoder(backbone.model.visual, settings.vv_start_layer)
        self.visual = VisualSource(settings, backbone, self.encoder)
        self._preparer = Preparer(backbone.image_size, backbone.mean, backbone.std,
                                  settings.tiling, self.visual.preprocess)  # fmt: skip
        self._text = TextCache()
        self._adam_carry: dict[str, AdamState] = {}  # AnoVL quirk mode only
        self._textures = Textures(settings.synth_textures)
        self._plain_forward: PlainForward | None = None  # built on first use

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def _plain(self) -> PlainForward | None:
        """The 21 augmented views' tower (:mod:`anoclip.clip.plain`), built once when needed."""
        if self.settings.image_score != "cls_aug22":
            return None
        if self._plain_forward is None:
            rt = self.runtime
            self._plain_forward = plain_forward(self.backbone.model.visual, rt.precision,
                                                self.device, rt.view_engine)  # fmt: skip
        return self._plain_forward

    def text_bank(self, object_name: str) -> TextBank:
        """The (cached) prompt-ensemble embeddings for `object_name`."""
        s = self.settings
        name = prompt_name(object_name, s.class_names)
        texture = is_texture(object_name, s.domain)
        return self._text.get(self.backbone, name, texture, s.text_ensemble, s.text_tokens)

    def prepare(self, item: ImageInput, index: int = 0) -> Sample:
        """Decode and preprocess one input (raises :class:`ImageDecodeError`)."""
        return self._preparer.prepare(item, index)

    def fingerprint(
        self,
        object_name: str,
        tta: bool | str = True,
        mode: Mode = "anoclip",
        refs: int | str | None = None,
    ) -> dict[str, Any]:
        """What determines this detector's scores for `object_name` (recorded in thresholds):
        settings, model, weights (files by absolute path), seed, object, mode, refs, TTA."""
        bb = self.backbone
        weights = Path(bb.pretrained)
        pretrained = str(weights.resolve()) if weights.is_file() else bb.pretrained
        return fingerprint(
            self.settings, model=bb.name, pretrained=pretrained, seed=self.seed,
            object=object_name, mode=mode, refs=refs, tta=tta_kind(tta),
        )  # fmt: skip

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
        if uses_patch_scorer(self.settings, bank):
            yield from self._iter_patch_scored(images, object_name, tta, mode=mode, refs=refs,
                                               progress=progress, skip=skip, bank=bank)  # fmt: skip
            return
        kind, num_refs = tta_kind(tta), ref_count(mode, refs)
        items = as_list(images)
        skipped = set(skip)
        todo = [i for i in range(len(items)) if i not in skipped]
        bank = self.text_bank(object_name)
        context = ScoringContext(self.settings, self.backbone.image_size, self.seed, num_refs,
                                 self.device)  # fmt: skip
        store = SetStore(len(todo)) if num_refs else None
        pin = self.device.type == "cuda"
        rt = self.runtime
        with tqdm(total=len(todo), disable=not progress, unit="img", desc=object_name) as bar:
            for batch in batches(self._preparer, items, todo, rt.batch_size, rt.workers, pin):
                samples = [b for b in batch if isinstance(b, Sample)]
                feats = self.encode(samples, bank, kind, refs=store is not None)
                if store is None:
                    scored = score_each(samples, feats, context) if samples else []
                    yield from _in_order(batch, scored)
                else:
                    yield from (b for b in batch if isinstance(b, Failure))
                    if samples:
                        store.add(samples, feats)
                bar.update(len(batch))
        if store is not None and store.samples:
            yield from score_set(store.samples, store.features(), context)

    def _iter_patch_scored(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool | str,
        *,
        mode: Mode,
        refs: int | str | None,
        progress: bool,
        skip: Iterable[int],
        bank: NormalBank | None,
    ) -> Iterator[Scored | Failure]:
        """:meth:`iter_scored` with the patch scorer: the text branch only when fusion is
        not "visual"; alone (against the bank) batch by batch, a set after all batches."""
        kind, num_refs = tta_kind(tta), ref_count(mode, refs)
        if not num_refs and bank is None and self.settings.fusion == "visual":
            raise UsageError("fusion=visual needs visual references: mode dual/mutual or a bank")
        unused = unused_settings(self.settings, num_refs)
        if unused:
            warnings.warn(
                f"{', '.join(unused)}: not used by the patch scorer (it picks references by "
                "global feature and skips near-duplicates; see duplicate_threshold)",
                AnoclipWarning,
                stacklevel=3,
            )
        if bank is not None:
            self.check_bank(bank, object_name)
        items = as_list(images)
        skipped = set(skip)
        todo = [i for i in range(len(items)) if i not in skipped]
        text_bank = None if self.settings.fusion == "visual" else self.text_bank(object_name)
        context = ScoringContext(self.settings, self.backbone.image_size, self.seed, num_refs,
                                 self.device)  # fmt: skip
        kept: list[Sample] = []
        texts: list[Features] = []
        patches: list[PatchSet] = []
        rt = self.runtime
        pin = self.device.type == "cuda"
        with tqdm(total=len(todo), disable=not progress, unit="img", desc=object_name) as bar:
            for batch in batches(self._preparer, items, todo, rt.batch_size, rt.workers, pin):
                samples = [b for b in batch if isinstance(b, Sample)]
                text = self.encode(samples, text_bank, kind) if text_bank else None
                found = self.visual.patch_set(samples) if samples else None
                if not num_refs:
                    scored = score_patches(samples, found, text, context, bank) if found else []
                    yield from _in_order(batch, scored)
                else:
                    yield from (b for b in batch if isinstance(b, Failure))
                    for smp in samples:  # the pixels are no longer needed
                        smp.tiles, smp.visual = smp.tiles[:0], None
                    if found is not None:
                        kept += samples
                        patches.append(found)
                        if text is not None:
                            texts.append(_cpu(text))
                bar.update(len(batch))
        if kept:
            text_all = Features.cat(texts) if texts else None
            yield from score_patches(kept, PatchSet.cat(patches), text_all, context, bank)

    def build_bank(
        self, normals: ImageInput | Sequence[ImageInput], object_name: str
    ) -> NormalBank:
        """A bank of the patch features of known-good images (images or a folder; raises
        ImageDecodeError naming an unreadable one)."""
        items = normal_items(normals)
        if not items:
            raise UsageError("a bank needs at least one known-good image")
        parts: list[PatchSet] = []
        for batch in batches(self._preparer, items, range(len(items)), self.runtime.batch_size,
                             self.runtime.workers):  # fmt: skip
            for b in batch:
                if isinstance(b, Failure):
                    raise ImageDecodeError(f"bank image {b.source}: {b.reason}")
            parts.append(self.visual.patch_set(batch))  # type: ignore[arg-type]
        return NormalBank.build(PatchSet.cat(parts).feats, self.visual.bank_meta(object_name))

    def load_bank(self, path: str | Path, object_name: str) -> NormalBank:
        """A saved bank, refused (BankError, one line) unless built with these settings."""
        return NormalBank.load(path, expect=self.visual.bank_meta(object_name))

    def check_bank(self, bank: NormalBank, object_name: str) -> None:
        """Refuse a bank built with other settings (BankError naming the fields)."""
        diff = differences(bank.meta, self.visual.bank_meta(object_name))
        if diff:
            raise BankError(
                f"the bank was built with other settings (bank vs now): {'; '.join(diff)}"
            )

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
        return encode(
            self.backbone, self.encoder, tiles_of(samples, self.device), bank, self.settings,
            seed=self.seed, tta=kind, precision=self.runtime.precision, refs=refs,
            overrides=overrides, carry=carry, textures=self._textures, plain=self._plain(),
        )  # fmt: skip


def _cpu(f: Features) -> Features:
    """Text-branch features kept for a set (on the CPU, no visual tokens)."""
    return Features(f.text_cos.cpu(), f.cls_cos.cpu(), f.cls.cpu(), f.grid)


def _in_order(batch: Sequence[Sample | Failure], scored: list[Scored]) -> Iterator:
    """The batch's failures and scored images, in the batch's order."""
    results = iter(scored)
    for item in batch:
        yield item if isinstance(item, Failure) else next(results)
