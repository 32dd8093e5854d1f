"""Data loading: user inputs -> preprocessed :class:`~anoclip.records.Sample` batches.

    ImageInput (path | PIL | array | tensor) -> load_rgb -> plan_layout -> to_tensor
        -> Sample(tiles `[T, 3, S, S]`, layout, original size)

Files are decoded lazily, by a DataLoader worker when there is more than one batch of them
(the model runs meanwhile); an undecodable input becomes a :class:`Failure` in its place.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from anoclip.data.images import DRAFT_PIXELS, ImageInput, load_rgb, open_image, source_name
from anoclip.data.preprocess import VisualPreprocess, plan_layout, to_input, to_tensor
from anoclip.errors import ImageDecodeError
from anoclip.records import Failure, Sample
from anoclip.settings import Tiling

# JPEG files above this many pixels are decoded at a reduced scale (images.load_rgb).
DECODE_MAX_PIXELS = DRAFT_PIXELS


class Preparer:
    """Decoding + preprocessing of inputs; small and picklable (DataLoader workers).

    visual: the preprocessing of a separate visual backbone; each image is then decoded
    once and also prepared as that backbone's input (`Sample.visual`). tiles=False: no
    CLIP tiles (`Sample.tiles` empty; the layout still gives the maps' resolution)."""

    def __init__(
        self,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        tiling: Tiling = "none",
        visual: VisualPreprocess | None = None,
        tiles: bool = True,
    ) -> None:
        self.size, self.mean, self.std, self.tiling = size, tuple(mean), tuple(std), tiling
        self.visual, self.tiles = visual, tiles

    def prepare(self, item: ImageInput, index: int = 0) -> Sample:
        """Decode and preprocess one input (raises :class:`ImageDecodeError`)."""
        size = _file_size(item)
        img = load_rgb(item, DECODE_MAX_PIXELS)
        width, height = size or img.size
        layout = plan_layout(height, width, self.size, self.tiling)
        if self.tiles:
            tiles = to_tensor(img, layout, self.mean, self.std)
        else:
            tiles = torch.empty(0, 3, self.size, self.size)
        visual = None if self.visual is None else to_input(img, self.visual)[0]
        return Sample(index, source_name(item, index), tiles, layout, (height, width), visual)


class LazyInputs(Dataset):
    """Decodes and preprocesses inputs on access; a decode error becomes a Failure."""

    def __init__(self, preparer: Preparer, items: Sequence[ImageInput], todo: Sequence[int]):
        self.preparer, self.items, self.todo = preparer, items, list(todo)

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, k: int) -> Sample | Failure:
        index = self.todo[k]
        item = self.items[index]
        try:
            return self.preparer.prepare(item, index)
        except ImageDecodeError as exc:
            return Failure(source_name(item, index), str(exc))


def batches(
    preparer: Preparer,
    items: Sequence[ImageInput],
    todo: Sequence[int],
    batch_size: int,
    workers: int | None = None,
    pin_memory: bool = False,
) -> Iterator[list[Sample | Failure]]:
    """Batches of prepared inputs `items[i]` for i in `todo`, in order.

    workers: DataLoader processes; None picks 1 when there is more than one batch of
    files and more than one CPU, else 0 (decode in this process).
    """
    dataset = LazyInputs(preparer, items, todo)
    if workers is None:
        all_files = all(isinstance(items[i], (str, os.PathLike)) for i in todo)
        many = len(todo) > batch_size and (os.cpu_count() or 1) > 1
        workers = 1 if all_files and many else 0
    if workers == 0:
        for start in range(0, len(dataset), batch_size):
            yield [dataset[k] for k in range(start, min(start + batch_size, len(dataset)))]
        return
    yield from DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=_single_thread,
        persistent_workers=False,
        pin_memory=pin_memory,
    )


def as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One input or a sequence of inputs -> a list of inputs."""
    if isinstance(images, (str, os.PathLike, Path)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim in (2, 3):
        return [images]
    if hasattr(images, "mode") and hasattr(images, "size"):  # a PIL image
        return [images]
    return list(images)


def _file_size(item: ImageInput) -> tuple[int, int] | None:
    """(width, height) of a JPEG file from its header, which draft decoding may reduce
    (None for other inputs: they are decoded whole, at their own size). The EXIF
    orientation is read from the header too (for PNG, reading it would decode the file)."""
    if not isinstance(item, (str, os.PathLike)):
        return None
    try:
        with open_image(item) as img:  # load_rgb reports a huge image, once
            if img.format != "JPEG":
                return None
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF transposes
                width, height = height, width
            return width, height
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _single_thread(_: int) -> None:
    """DataLoader workers: one thread each; Ctrl-C is the main process's to handle, and a
    worker's stderr is silenced (its errors reach the main process through the loader;
    only teardown noise such as a broken pipe after an interrupt would be printed)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the worker
