"""The public entry point: :class:`Detector` scores images of one object, zero-shot.

Data path per batch (one module per step):

    images -> preprocess (tiles `[T, 3, S, S]`) -> VVEncoder (CLS `[T, C]`, V-V tokens
    `[T, L, C]`) -> text bank (cached per object) -> TTA (optional, adapter per tile and
    layer) -> patch probabilities `[T, L]` -> pooled maps `[T, S, S]` -> stitched map at
    model resolution `[H', W']` -> resized to the original image `[H, W]`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED, Backbone, load_backbone
from .encoder import VVEncoder
from .images import ImageDecodeError, ImageInput, load_rgb, source_name
from .preprocess import Layout, plan_layout, resize_map, stitch, to_tensor
from .prompts import is_texture, prompt_name
from .scoring import anomaly_prob, gaussian_blur, image_score, patch_map
from .settings import Settings
from .text import TextBank, TextCache
from .tta import AdamState, TTAOverrides, adapt_tokens
from .views import augmented_views

_VIEW_CHUNK = 64  # augmented views encoded per forward pass


@dataclass
class Prediction:
    """The result for one image.

    score: image-level anomaly score (probability of "abnormal", in [0, 1]).
    anomaly_map: `[H, W]` float32 per-pixel anomaly probability at the image's own size.
    source: the path as given, or the index of an in-memory image.
    """

    source: str
    score: float
    anomaly_map: np.ndarray


@dataclass
class Failure:
    """An input that could not be scored (e.g. undecodable file) and why."""

    source: str
    reason: str


@dataclass
class Sample:
    """A preprocessed image: tiles `[T, 3, S, S]`, their layout and the original size."""

    index: int
    source: str
    tiles: torch.Tensor
    layout: Layout
    size: tuple[int, int]


@dataclass
class BatchResult:
    """Raw outputs for a batch: scores `[B]` and maps at model resolution (list of `[H', W']`)."""

    scores: torch.Tensor
    maps: list[torch.Tensor]


class Detector:
    """Zero-shot anomaly detector (AnoCLIP; METHOD.md §2).

    Args:
        model: open_clip model name or path of an open_clip model-config JSON.
        pretrained: open_clip tag, local checkpoint path, or ``"none"`` (random weights).
        device: ``None`` picks CUDA when available, else CPU.
        seed: seeds TTA's adapter initialisation and noise; equal seeds give equal outputs.
        settings: a :class:`Settings`; keyword `overrides` replace its fields
            (e.g. ``Detector(temperature=0.07, adapter="linear")``).
        backbone: an already loaded :class:`Backbone` (then model/pretrained are ignored).
        num_workers: DataLoader workers decoding image files (None: 1 when there is more
            than one batch of files, else 0).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        pretrained: str | None = DEFAULT_PRETRAINED,
        device: str | torch.device | None = None,
        seed: int = 0,
        settings: Settings | None = None,
        *,
        backbone: Backbone | None = None,
        cache_dir: str | None = None,
        num_workers: int | None = None,
        **overrides: object,
    ) -> None:
        unknown = sorted(set(overrides) - set(Settings.names()))
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        self.settings = replace(settings or Settings(), **overrides)
        self.backbone = backbone or load_backbone(model, pretrained, device, cache_dir)
        self.settings.token_layers(self.backbone.depth)  # validates layers early
        self.encoder = VVEncoder(self.backbone.model.visual, self.settings.vv_start_layer)
        self.seed = int(seed)
        self.num_workers = num_workers
        self._preparer = Preparer(self.backbone, self.settings)
        self._text = TextCache()
        self._adam_carry: dict[str, AdamState] = {}

    # ------------------------------------------------------------------ public API

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def text_bank(self, object_name: str) -> TextBank:
        """The (cached) prompt-ensemble embeddings for `object_name`."""
        s = self.settings
        name = prompt_name(object_name, s.class_names)
        return self._text.get(
            self.backbone, name, is_texture(object_name, s.domain), s.text_ensemble, s.text_tokens
        )

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool = True,
        *,
        progress: bool = False,
    ) -> list[Prediction]:
        """Score `images` (paths, PIL images, arrays `[H, W(, C)]`, or a mix).

        Returns one :class:`Prediction` per image, in input order. Raises
        :class:`ImageDecodeError` naming the first input that cannot be decoded.
        """
        out = []
        for item in self.iter_predict(images, object_name, tta, progress=progress):
            if isinstance(item, Failure):
                raise ImageDecodeError(f"{item.source}: {item.reason}")
            out.append(item)
        return out

    def iter_predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool = True,
        *,
        progress: bool = False,
        skip: Iterable[int] = (),
    ) -> Iterator[Prediction | Failure]:
        """Like :meth:`predict`, but yields results batch by batch and reports
        undecodable inputs as :class:`Failure` instead of raising. Indices in `skip`
        are not processed (used to resume a run)."""
        for item in self.iter_raw(images, object_name, tta, progress=progress, skip=skip):
            yield item if isinstance(item, Failure) else self._prediction(*item)

    def iter_raw(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool = True,
        *,
        progress: bool = False,
        skip: Iterable[int] = (),
    ) -> Iterator[tuple[Sample, float, torch.Tensor] | Failure]:
        """Yields (sample, score, map at model resolution `[H', W']`) or a Failure."""
        items = _as_list(images)
        skipped = set(skip)
        todo = [i for i in range(len(items)) if i not in skipped]
        bank = self.text_bank(object_name)
        bar = tqdm(total=len(todo), disable=not progress, unit="img", desc=object_name)
        try:
            for batch in self._batches(items, todo):
                samples = [b for b in batch if isinstance(b, Sample)]
                result = self.run_batch(samples, bank, tta) if samples else None
                k = 0
                for item in batch:
                    if isinstance(item, Failure):
                        yield item
                        continue
                    yield item, float(result.scores[k]), result.maps[k]
                    k += 1
                bar.update(len(batch))
        finally:
            bar.close()

    # ------------------------------------------------------------------ pipeline

    def run_batch(
        self,
        samples: Sequence[Sample],
        bank: TextBank,
        tta: bool = True,
        overrides: TTAOverrides | None = None,
    ) -> BatchResult:
        """Scores `[B]` and model-resolution maps for preprocessed samples.

        `overrides` is the testing hook for TTA's initial weights and noise.
        """
        s = self.settings
        dev = self.device
        x = torch.cat([smp.tiles for smp in samples]).to(dev)
        counts = [smp.tiles.shape[0] for smp in samples]
        layers = s.token_layers(self.backbone.depth)
        feats = bank.features.to(dev)
        with torch.inference_mode(), self._autocast():
            enc = self.encoder(x, layers)
            tile_scores = self._tile_scores(x, enc.cls, feats)
        tokens = torch.stack([enc.vv[layer].float() for layer in layers], dim=1)  # [T, nL, L, C]
        n_tiles, n_layers, length, dim = tokens.shape
        tokens = tokens.reshape(n_tiles * n_layers, length, dim)
        if tta and s.tta_steps > 0:
            generator = torch.Generator().manual_seed(self.seed)
            carry = None
            if not s.reset_optimizer_state:
                carry = self._adam_carry.setdefault(bank.name, AdamState([], []))
            tokens = adapt_tokens(
                tokens, feats, bank.sentences.to(dev), s, generator, overrides, carry
            )
        with torch.inference_mode():
            probs = anomaly_prob(tokens, feats, s.temperature)  # [T·nL, L]
            tile = samples[0].layout.tile
            maps = patch_map(probs, enc.grid, (tile, tile)).view(n_tiles, n_layers, tile, tile)
            maps = gaussian_blur(maps.mean(dim=1), s.gaussian_sigma)
            per_image_maps = [
                stitch(m, smp.layout).float().cpu() for m, smp in zip(maps.split(counts), samples)
            ]
            scores = torch.stack([t.mean() for t in tile_scores.split(counts)]).cpu()
        return BatchResult(scores=scores, maps=per_image_maps)

    def _tile_scores(self, x: torch.Tensor, cls: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Image score per tile `[T]`: CLS of the identity view, plus 21 augmented views."""
        if self.settings.image_score == "cls":
            return image_score(cls.unsqueeze(1), feats, self.settings.temperature)
        views = augmented_views(x)[:, 1:]  # the identity view's CLS is `cls`
        n, v = views.shape[:2]
        flat = views.reshape(n * v, *views.shape[2:])
        embs = torch.cat([self.backbone.model.visual(chunk) for chunk in flat.split(_VIEW_CHUNK)])
        all_cls = torch.cat([cls.unsqueeze(1), embs.view(n, v, -1)], dim=1)
        return image_score(all_cls, feats, self.settings.temperature)

    def _autocast(self) -> contextlib.AbstractContextManager:
        prec = self.settings.precision
        if self.device.type != "cuda" or prec == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if prec == "fp16" else torch.bfloat16
        return torch.autocast("cuda", dtype=dtype)

    def _prediction(self, sample: Sample, score: float, m: torch.Tensor) -> Prediction:
        full = resize_map(m, sample.size).clamp(0.0, 1.0)
        return Prediction(sample.source, score, full.numpy().astype(np.float32))

    # ------------------------------------------------------------------ data loading

    def prepare(self, item: ImageInput, index: int = 0) -> Sample:
        """Decode and preprocess one input (raises :class:`ImageDecodeError`)."""
        return self._preparer.prepare(item, index)

    def _batches(self, items: list, todo: list[int]) -> Iterator[list[Sample | Failure]]:
        dataset = _Inputs(self._preparer, items, todo)
        size = self.settings.batch_size
        all_files = all(isinstance(items[i], (str, os.PathLike)) for i in todo)
        workers = self.num_workers
        if workers is None:
            workers = 1 if all_files and len(todo) > size and (os.cpu_count() or 1) > 1 else 0
        if workers == 0:
            for start in range(0, len(todo), size):
                yield [dataset[k] for k in range(start, min(start + size, len(todo)))]
            return
        loader = DataLoader(
            dataset,
            batch_size=size,
            num_workers=workers,
            collate_fn=list,
            worker_init_fn=_single_thread,
            persistent_workers=False,
        )
        yield from loader


class Preparer:
    """Decoding + preprocessing of inputs; small and picklable (DataLoader workers)."""

    def __init__(self, backbone: Backbone, settings: Settings) -> None:
        self.tiling = settings.tiling
        self.size, self.mean, self.std = backbone.image_size, backbone.mean, backbone.std

    def prepare(self, item: ImageInput, index: int = 0) -> Sample:
        img = load_rgb(item)
        width, height = img.size
        layout = plan_layout(height, width, self.size, self.tiling)
        tiles = to_tensor(img, layout, self.mean, self.std)
        return Sample(index, source_name(item, index), tiles, layout, (height, width))


class _Inputs(Dataset):
    """Decodes and preprocesses inputs lazily; a decode error becomes a :class:`Failure`."""

    def __init__(self, preparer: Preparer, items: list, todo: list[int]) -> None:
        self.preparer, self.items, self.todo = preparer, items, todo

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> Sample | Failure:
        index = self.todo[k]
        item = self.items[index]
        try:
            return self.preparer.prepare(item, index)
        except ImageDecodeError as exc:
            return Failure(source_name(item, index), str(exc))


def _single_thread(_: int) -> None:
    torch.set_num_threads(1)


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    if isinstance(images, (str, os.PathLike, Path)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim in (2, 3):
        return [images]
    if hasattr(images, "mode") and hasattr(images, "size"):  # a PIL image
        return [images]
    return list(images)
