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
import warnings
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
from .scoring import gaussian_blur, l2_normalize, patch_map, probs_from_cosines, text_cosines
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

    def pin_memory(self) -> Sample:
        """Called by the DataLoader (pin_memory=True on CUDA) for faster transfers."""
        self.tiles = self.tiles.pin_memory()
        return self


@dataclass
class Features:
    """Encoder and text-branch outputs for T units (image tiles) with an h×w grid.

    text_cos: `[T, nL, L, 2]` cosines of the (adapted) patch tokens with F, per layer.
    cls_cos: `[T, V, 2]` cosines of the CLS of each view (V = 22 or 1).
    cls: `[T, C]` identity-view CLS embeddings (for pairing images).
    ref_tokens: `[T, nR, L, C]` L2-normalised frozen tokens of the visual branch, or None.
    """

    text_cos: torch.Tensor
    cls_cos: torch.Tensor
    cls: torch.Tensor
    grid: tuple[int, int]
    ref_tokens: torch.Tensor | None = None


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
        self._texture_files: list[Path] | None = None  # synth_textures, listed once

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
        tta: bool | str = True,
        *,
        mode: str = "anoclip",
        refs: int | str | None = None,
        progress: bool = False,
    ) -> list[Prediction]:
        """Score `images` (paths, PIL images, arrays `[H, W(, C)]`, or a mix).

        tta: True (= "noise", AnoCLIP's), False (= "none"), "synth" (synthesized anomalies,
            Dual-Image) or "both".
        mode: "anoclip" scores each image alone; "dual" pairs the images, each the visual
            reference of the other; "mutual" scores each against `refs` others ("all" by
            default: every other image). dual/mutual treat `images` as one unlabeled set of
            the same object; with a single image they fall back to "anoclip" (warning).

        Returns one :class:`Prediction` per image, in input order. Raises
        :class:`ImageDecodeError` naming the first input that cannot be decoded.
        """
        out = []
        stream = self.iter_predict(
            images, object_name, tta, mode=mode, refs=refs, progress=progress
        )
        for item in stream:
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
        mode: str = "anoclip",
        refs: int | str | None = None,
        progress: bool = False,
        skip: Iterable[int] = (),
    ) -> Iterator[Prediction | Failure]:
        """Like :meth:`predict`, but yields results as they are ready (batch by batch in
        "anoclip" mode; after all images are encoded in "dual"/"mutual" mode) and reports
        undecodable inputs as :class:`Failure` instead of raising. Indices in `skip`
        are not processed (used to resume a run)."""
        raw = self.iter_raw(
            images, object_name, tta, mode=mode, refs=refs, progress=progress, skip=skip
        )
        for item in raw:
            yield item if isinstance(item, Failure) else self._prediction(*item)

    def iter_raw(
        self,
        images: ImageInput | Sequence[ImageInput],
        object_name: str,
        tta: bool | str = True,
        *,
        mode: str = "anoclip",
        refs: int | str | None = None,
        progress: bool = False,
        skip: Iterable[int] = (),
    ) -> Iterator[tuple[Sample, float, torch.Tensor] | Failure]:
        """Yields (sample, score, map at model resolution `[H', W']`) or a Failure."""
        kind = tta_kind(tta)
        num_refs = reference_count(mode, refs)
        items = _as_list(images)
        skipped = set(skip)
        todo = [i for i in range(len(items)) if i not in skipped]
        bank = self.text_bank(object_name)
        bar = tqdm(total=len(todo), disable=not progress, unit="img", desc=object_name)
        kept: list[tuple[list[Sample], Features]] = []
        try:
            for batch in self._batches(items, todo):
                samples = [b for b in batch if isinstance(b, Sample)]
                feats = (
                    self.encode_batch(samples, bank, kind, refs=num_refs != 0) if samples else None
                )
                if num_refs != 0:  # transductive: keep features, score at the end
                    yield from (item for item in batch if isinstance(item, Failure))
                    if samples:
                        for smp in samples:
                            smp.tiles = smp.tiles[:0]  # pixels are no longer needed
                        kept.append((samples, self._keep(feats, len(todo), samples)))
                else:
                    yield from self._stream_results(batch, samples, feats)
                bar.update(len(batch))
        finally:
            bar.close()
        if kept:
            yield from self._transductive_results(kept, num_refs)

    @staticmethod
    def _keep(f: Features, n_images: int, samples: Sequence[Sample]) -> Features:
        """Features kept for transductive scoring: on the CPU, large token sets in float16."""
        tokens = storage_dtype(f.ref_tokens.cpu(), n_images, samples)
        return Features(f.text_cos.cpu(), f.cls_cos.cpu(), f.cls.cpu(), f.grid, tokens)

    def _stream_results(self, batch, samples, feats):
        result = self.anoclip_outputs(feats, samples) if samples else None
        k = 0
        for item in batch:
            if isinstance(item, Failure):
                yield item
                continue
            yield item, float(result.scores[k]), result.maps[k]
            k += 1

    def _transductive_results(self, kept, num_refs):
        from .transductive import score_transductive

        samples = [smp for group, _ in kept for smp in group]
        if len(samples) < 2:
            warnings.warn(
                "anoclip: dual/mutual mode needs at least two images; scoring the single "
                "image in anoclip mode",
                UserWarning,
                stacklevel=3,
            )
            for group, feats in kept:
                yield from self._stream_results(group, group, feats)
            return
        yield from score_transductive(self, samples, [f for _, f in kept], num_refs)

    # ------------------------------------------------------------------ pipeline

    def run_batch(
        self,
        samples: Sequence[Sample],
        bank: TextBank,
        tta: bool | str = True,
        overrides: TTAOverrides | None = None,
    ) -> BatchResult:
        """AnoCLIP scores `[B]` and model-resolution maps for preprocessed samples.

        `overrides` is the testing hook for TTA's initial weights and noise.
        """
        return self.anoclip_outputs(
            self.encode_batch(samples, bank, tta_kind(tta), overrides), samples
        )

    def encode_batch(
        self,
        samples: Sequence[Sample],
        bank: TextBank,
        kind: str = "noise",
        overrides: TTAOverrides | None = None,
        refs: bool = False,
    ) -> Features:
        """Encoder + text branch (+ TTA of kind `kind`) for the tiles of `samples`."""
        s = self.settings
        dev = self.device
        x = torch.cat([smp.tiles for smp in samples]).to(dev, non_blocking=True)
        depth = self.backbone.depth
        layers = s.token_layers(depth)
        ref_layers = s.reference_layers(depth) if refs else ()
        vv_layers = sorted(set(layers) | (set(ref_layers) if s.ref_features == "vv" else set()))
        ori_layers = ref_layers if s.ref_features == "ori" else ()
        feats = bank.features.to(dev)
        with torch.inference_mode(), self._autocast():
            enc = self.encoder(x, vv_layers, ori_layers)
            cls_cos = self._cls_cosines(x, enc.cls, feats)
        tokens = torch.stack([enc.vv[layer].float() for layer in layers], dim=1)  # [T, nL, L, C]
        n_tiles, n_layers, length, dim = tokens.shape
        tokens = tokens.reshape(n_tiles * n_layers, length, dim)
        if kind != "none" and s.tta_steps > 0:
            tokens = self._adapt(tokens, x, layers, bank, kind, overrides)
        with torch.inference_mode():
            text_cos = text_cosines(tokens, feats).view(n_tiles, n_layers, length, 2)
            ref_tokens = None
            if refs:
                source = enc.vv if s.ref_features == "vv" else enc.ori
                ref = torch.stack([source[layer].float() for layer in ref_layers], dim=1)
                ref_tokens = l2_normalize(ref)
        return Features(text_cos, cls_cos, enc.cls.float(), enc.grid, ref_tokens)

    def anoclip_outputs(self, f: Features, samples: Sequence[Sample]) -> BatchResult:
        """AnoCLIP maps (stitched, model resolution) and image scores from features."""
        s = self.settings
        counts = [smp.layout.num_tiles for smp in samples]
        with torch.inference_mode():
            maps = self.tile_maps(f.text_cos, f.grid, s.temperature)
            per_image_maps = [
                stitch(m, smp.layout).float().cpu() for m, smp in zip(maps.split(counts), samples)
            ]
            tile_scores = probs_from_cosines(f.cls_cos, s.temperature).mean(dim=1)
            scores = torch.stack([t.mean() for t in tile_scores.split(counts)]).cpu()
        return BatchResult(scores=scores, maps=per_image_maps)

    def tile_maps(
        self, text_cos: torch.Tensor, grid: tuple[int, int], temperature: float
    ) -> torch.Tensor:
        """Text-branch maps per unit `[T, S, S]` from cosines `[T, nL, L, 2]` at
        `temperature` (layer maps averaged)."""
        n_tiles, n_layers, length, _ = text_cos.shape
        tile = self.backbone.image_size
        probs = probs_from_cosines(text_cos, temperature).reshape(n_tiles * n_layers, length)
        maps = patch_map(probs, grid, (tile, tile)).view(n_tiles, n_layers, tile, tile)
        return gaussian_blur(maps.mean(dim=1), self.settings.gaussian_sigma)

    def _adapt(self, tokens, x, layers, bank: TextBank, kind: str, overrides) -> torch.Tensor:
        """TTA of the text branch: tokens `[T·nL, L, C]` -> adapted tokens."""
        s = self.settings
        dev = self.device
        generator = torch.Generator().manual_seed(self.seed)
        carry = None
        if not s.reset_optimizer_state:
            carry = self._adam_carry.setdefault(f"{bank.name}|{kind}", AdamState([], []))
        synth = self._synthetic_tokens(x, layers) if kind in ("synth", "both") else None
        return adapt_tokens(
            tokens, bank.features.to(dev), bank.sentences.to(dev), s, generator, overrides, carry,
            synth=synth, use_noise=kind in ("noise", "both"),
        )  # fmt: skip

    def _synthetic_tokens(self, x: torch.Tensor, layers) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `[T·nL, L, C]` of a synthesized-anomaly version of every tile, and their
        labels `[T·nL, L]`. The same seeded draw serves every tile (batch invariance)."""
        from .synth import synthesize

        bb = self.backbone
        mean = torch.tensor(bb.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(bb.std, device=x.device).view(3, 1, 1)
        grid = self.encoder.grid
        start = torch.Generator().manual_seed(self.seed + 1)
        texture = self._texture(start, x.shape[-2:], x.device)  # the same draw for every tile
        images, labels = [], []
        for tile in x:
            g = torch.Generator()
            g.set_state(start.get_state())
            syn = synthesize((tile.float() * std + mean).clamp(0, 1), grid, g, texture)
            images.append((syn.image - mean) / std)
            labels.append(syn.labels)
        with torch.inference_mode(), self._autocast():
            enc = self.encoder(torch.stack(images).to(x.dtype), layers)
        tokens = torch.stack([enc.vv[layer].float() for layer in layers], dim=1)
        n_tiles, n_layers, length, dim = tokens.shape
        lab = torch.stack(labels)[:, None].expand(n_tiles, n_layers, length)
        return tokens.reshape(-1, length, dim).clone(), lab.reshape(-1, length).clone()

    def _texture(self, g: torch.Generator, size, device) -> torch.Tensor | None:
        folder = self.settings.synth_textures
        if not folder:
            return None
        if self._texture_files is None:
            from .images import expand_inputs

            self._texture_files = expand_inputs([folder])
        files = self._texture_files
        if not files:
            raise ValueError(f"synth_textures: no images in {folder}")
        img = load_rgb(files[int(torch.randint(len(files), (), generator=g))])
        img = img.resize((size[1], size[0]))
        return (
            torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).to(device)
        )

    def _cls_cosines(self, x: torch.Tensor, cls: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Text cosines of the CLS per tile and view `[T, V, 2]`: the identity view's CLS,
        plus the 21 augmented views when image_score is "cls_aug22"."""
        if self.settings.image_score == "cls":
            return text_cosines(cls.float().unsqueeze(1), feats)
        views = augmented_views(x)[:, 1:]  # the identity view's CLS is `cls`
        n, v = views.shape[:2]
        flat = views.reshape(n * v, *views.shape[2:])
        embs = torch.cat([self.backbone.model.visual(chunk) for chunk in flat.split(_VIEW_CHUNK)])
        all_cls = torch.cat([cls.unsqueeze(1), embs.view(n, v, -1)], dim=1)
        return text_cosines(all_cls.float(), feats)

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
            pin_memory=self.device.type == "cuda",
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


TTA_KINDS = ("none", "noise", "synth", "both")
MODES = ("anoclip", "dual", "mutual")


def tta_kind(tta: bool | str | None) -> str:
    """True -> "noise" (AnoCLIP), False/None -> "none", or one of TTA_KINDS."""
    if tta is True:
        return "noise"
    if tta is False or tta is None:
        return "none"
    if tta not in TTA_KINDS:
        raise ValueError(f"tta must be a bool or one of {TTA_KINDS}, got {tta!r}")
    return tta


def reference_count(mode: str, refs: int | str | None) -> int | str:
    """References per image: 0 (anoclip), 1 (dual), k or "all" (mutual)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "anoclip":
        if refs not in (None, 0):
            raise ValueError("refs needs mode='dual' or 'mutual'")
        return 0
    if mode == "dual":
        if refs not in (None, 1):
            raise ValueError("mode='dual' uses exactly one reference; use mode='mutual' for more")
        return 1
    if refs is None or refs == "all":
        return "all"
    if isinstance(refs, str) and refs.isdigit():
        refs = int(refs)
    if not isinstance(refs, int) or refs < 1:
        raise ValueError(f"refs must be a positive integer or 'all', got {refs!r}")
    return refs


# Visual-branch tokens of a whole set above this many bytes (as float32) are kept in float16.
FLOAT16_ABOVE_BYTES = 2 * 2**30


def storage_dtype(tokens: torch.Tensor, n_images: int, samples: Sequence[Sample]) -> torch.Tensor:
    """Tokens as kept for the references: float16 when the projected set is large."""
    per_image = (
        tokens[0].numel() * 4 * max(1, sum(s.layout.num_tiles for s in samples) // len(samples))
    )
    return tokens.half() if per_image * n_images > FLOAT16_ABOVE_BYTES else tokens


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
