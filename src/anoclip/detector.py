"""The public facade: :class:`Detector` scores images of one object, zero-shot.

It holds the loaded model and orchestrates one module per step of the data path:

    inputs -> loading (Sample: tiles `[T, 3, S, S]`) -> text (TextBank, cached per object)
        -> encode (VVEncoder, CLS views, TTA: Features) -> modes (score_each | score_set:
        Scored, model resolution) -> Prediction (map resized to the image `[H, W]`)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbone import Backbone, load_backbone
from .encode import encode, tiles_of
from .encoder import VVEncoder
from .errors import ImageDecodeError
from .images import ImageInput
from .loading import Preparer, as_list, batches
from .modes import ScoringContext, SetStore, score_each, score_set
from .preprocess import resize_map
from .prompts import is_texture, prompt_name
from .records import Failure, Features, Prediction, Sample, Scored
from .settings import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Mode,
    Runtime,
    Settings,
    apply,
    ref_count,
    tta_kind,
)
from .synth import Textures
from .text import TextBank, TextCache
from .tta import AdamState, TTAOverrides


class Detector:
    """Zero-shot anomaly detector (AnoCLIP, METHOD.md §2; Dual-Image modes, §3).

    Args:
        model: open_clip model name or path of an open_clip model-config JSON.
        pretrained: open_clip tag, local checkpoint path, or ``"none"`` (random weights,
            drawn from `seed`).
        device: ``None`` picks CUDA when available, else CPU.
        seed: seeds random weights, TTA and random pairing; equal seeds give equal outputs.
        settings: what is computed (:class:`Settings`); runtime: how (:class:`Runtime`:
            batch size, workers, device, precision). Keyword `overrides` replace fields of
            either (e.g. ``Detector(temperature=0.07, batch_size=4)``).
        backbone: an already loaded :class:`Backbone` (then model/pretrained are ignored).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str | torch.device | None = None,
        seed: int = 0,
        settings: Settings | None = None,
        *,
        runtime: Runtime | None = None,
        backbone: Backbone | None = None,
        cache_dir: str | None = None,
        num_workers: int | None = None,
        **overrides: object,
    ) -> None:
        runtime = runtime or Runtime(device=None if device is None else str(device))
        if num_workers is not None:
            overrides["workers"] = num_workers
        self.settings, self.runtime = apply(settings or Settings(), runtime, **overrides)
        self.seed = int(seed)
        self.backbone = backbone or load_backbone(
            model, pretrained, self.runtime.device, cache_dir, seed=self.seed
        )
        self.settings.token_layers(self.backbone.depth)  # validates layers early
        self.encoder = VVEncoder(self.backbone.model.visual, self.settings.vv_start_layer)
        bb = self.backbone
        self._preparer = Preparer(bb.image_size, bb.mean, bb.std, self.settings.tiling)
        self._text = TextCache()
        self._adam_carry: dict[str, AdamState] = {}  # AnoVL quirk mode only
        self._textures = Textures(self.settings.synth_textures)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def text_bank(self, object_name: str) -> TextBank:
        """The (cached) prompt-ensemble embeddings for `object_name`."""
        s = self.settings
        name = prompt_name(object_name, s.class_names)
        texture = is_texture(object_name, s.domain)
        return self._text.get(self.backbone, name, texture, s.text_ensemble, s.text_tokens)

    def prepare(self, item: ImageInput, index: int = 0) -> Sample:
        """Decode and preprocess one input (raises :class:`ImageDecodeError`)."""
        return self._preparer.prepare(item, index)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool | str = True,
        **options: object,
    ) -> list[Prediction]:
        """Score `images` (paths, PIL images, arrays `[H, W(, C)]`, or a mix).

        tta: True (= "noise", AnoCLIP's), False (= "none"), "synth" (synthesized anomalies,
            Dual-Image) or "both".
        mode: "anoclip" scores each image alone; "dual" pairs the images, each the visual
            reference of the other; "mutual" scores each against `refs` others ("all" by
            default). dual/mutual treat `images` as one unlabeled set of the same object;
            with a single image they fall back to "anoclip" (warning).
        progress: show a progress bar.

        Returns one :class:`Prediction` per image, in input order. Raises
        :class:`ImageDecodeError` naming the first input that cannot be decoded.
        """
        out = []
        for item in self.iter_predict(images, object_name, tta, **options):
            if isinstance(item, Failure):
                raise ImageDecodeError(f"{item.source}: {item.reason}")
            out.append(item)
        return out

    def iter_predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool | str = True,
        *,
        max_map_side: int | None = None,
        **options: object,
    ) -> Iterator[Prediction | Failure]:
        """Like :meth:`predict`, but yields results as they are ready (batch by batch alone;
        after the whole set is encoded in a set mode) and reports undecodable inputs as
        :class:`Failure`. Options as :meth:`iter_scored` (`skip` resumes a run);
        `max_map_side` caps the longest side of the returned maps (aspect kept)."""
        for item in self.iter_scored(images, object_name, tta, **options):
            if isinstance(item, Failure):
                yield item
                continue
            size = capped(item.sample.size, max_map_side)
            full = resize_map(item.map, size).clamp(0.0, 1.0).numpy().astype(np.float32)
            yield Prediction(item.sample.source, item.score, full, item.mode, item.sample.size)

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
    ) -> Iterator[Scored | Failure]:
        """The data path: load -> encode -> score each image alone, or the set together.
        Yields :class:`Scored` (maps at model resolution) or :class:`Failure`; indices in
        `skip` are not processed."""
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
            overrides=overrides, carry=carry, textures=self._textures,
        )  # fmt: skip


def capped(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(H, W) scaled down so that its longest side is at most `max_side` (None: as is)."""
    h, w = size
    if not max_side or max(h, w) <= max_side:
        return size
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _in_order(batch: Sequence[Sample | Failure], scored: list[Scored]) -> Iterator:
    """The batch's failures and scored images, in the batch's order."""
    results = iter(scored)
    for item in batch:
        yield item if isinstance(item, Failure) else next(results)
