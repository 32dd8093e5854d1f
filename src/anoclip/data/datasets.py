"""Test sets with labels and masks: MVTec AD, VisA, and a generic folder layout.

Every loader yields :class:`Item` records (image path, label, mask path, defect type,
category). Layouts:

    mvtec   ROOT/CAT/test/DEFECT/*.png, ROOT/CAT/ground_truth/DEFECT/*_mask.png
    visa    ROOT/split_csv/1cls.csv (object,split,label,image,mask; paths under ROOT)
    folder  ROOT/good/*, ROOT/DEFECT/*, optional ROOT/masks/DEFECT/STEM[_mask].png
            (or ROOT/CAT/... for several categories, each with a good/ folder)
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from anoclip.data.listing import IMAGE_SUFFIXES
from anoclip.errors import AnoclipError, AnoclipWarning

# official test split (Bergmann et al., CVPR 2019): good, defective
MVTEC_COUNTS = {
    "bottle": (20, 63), "cable": (58, 92), "capsule": (23, 109), "carpet": (28, 89),
    "grid": (21, 57), "hazelnut": (40, 70), "leather": (32, 92), "metal_nut": (22, 93),
    "pill": (26, 141), "screw": (41, 119), "tile": (33, 84), "toothbrush": (12, 30),
    "transistor": (60, 40), "wood": (19, 60), "zipper": (32, 119),
}  # fmt: skip
VISA_CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip
GOOD = "good"


class DatasetError(AnoclipError, ValueError):
    """A dataset that does not match its layout (one-line message)."""


@dataclass(frozen=True)
class Item:
    """One test image: label 1 = anomalous; mask None for normal images (all-zero)."""

    image: Path
    label: int
    mask: Path | None
    defect: str
    category: str


def load_dataset(
    kind: str, root: str | Path, categories: Sequence[str] | None = None, strict: bool = True
) -> dict[str, list[Item]]:
    """Items per category, in dataset order. `strict` asserts MVTec's official counts."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root not found: {root}")
    if kind == "mvtec":
        return mvtec(root, categories, strict)
    if kind == "visa":
        return visa(root, categories)
    if kind == "folder":
        return folder(root, categories)
    raise DatasetError(f"unknown dataset layout {kind!r}: use mvtec, visa or folder")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _pick(found: list[str], wanted: Sequence[str] | None, root: Path, kind: str) -> list[str]:
    if not found:
        raise DatasetError(f"no {kind} categories under {root}: is this the right --dataset?")
    if not wanted:
        return found
    missing = [c for c in wanted if c not in found]
    if missing:
        raise DatasetError(f"categories {missing} not in {root} (found: {', '.join(found)})")
    return list(wanted)


def mvtec(root: Path, categories: Sequence[str] | None, strict: bool) -> dict[str, list[Item]]:
    found = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    out: dict[str, list[Item]] = {}
    for cat in _pick(found, categories, root, "MVTec AD"):
        test, truth = root / cat / "test", root / cat / "ground_truth"
        items = []
        for defect_dir in sorted(p for p in test.iterdir() if p.is_dir()):
            defect = defect_dir.name
            for img in _images(defect_dir):
                if defect == GOOD:
                    items.append(Item(img, 0, None, defect, cat))
                    continue
                mask = truth / defect / f"{img.stem}_mask.png"
                if not mask.is_file():
                    raise DatasetError(f"missing mask for {img}: expected {mask}")
                items.append(Item(img, 1, mask, defect, cat))
        good = sum(1 for i in items if i.label == 0)
        expected = MVTEC_COUNTS.get(cat)
        if strict and expected and (good, len(items) - good) != expected:
            raise DatasetError(
                f"MVTec AD {cat}: found {good} good + {len(items) - good} defective test images, "
                f"the official split has {expected[0]} + {expected[1]} (use --no-strict to allow)"
            )
        out[cat] = items
    return out


def visa(root: Path, categories: Sequence[str] | None) -> dict[str, list[Item]]:
    split = root / "split_csv" / "1cls.csv"
    if not split.is_file():
        raise DatasetError(f"VisA split file not found: {split}")
    rows: dict[str, list[Item]] = {}
    with open(split, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("split") != "test":
                continue
            label = 0 if row["label"] == "normal" else 1
            mask = root / row["mask"] if label and row.get("mask") else None
            if label and (mask is None or not mask.is_file()):
                raise DatasetError(f"missing mask for {root / row['image']}: {mask}")
            cat = row["object"]
            defect = GOOD if label == 0 else "anomaly"
            rows.setdefault(cat, []).append(Item(root / row["image"], label, mask, defect, cat))
    return {c: rows[c] for c in _pick(sorted(rows), categories, root, "VisA")}


def folder(root: Path, categories: Sequence[str] | None) -> dict[str, list[Item]]:
    if (root / GOOD).is_dir():
        roots = {root.name: root}
    else:
        roots = {p.name: p for p in sorted(root.iterdir()) if (p / GOOD).is_dir()}
    out = {}
    for cat in _pick(sorted(roots), categories, root, "folder-layout"):
        out[cat] = _folder_category(roots[cat], cat)
    return out


def _folder_category(base: Path, cat: str) -> list[Item]:
    masks = base / "masks"
    items = []
    for defect_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name != "masks"):
        defect = defect_dir.name
        for img in _images(defect_dir):
            if defect == GOOD:
                items.append(Item(img, 0, None, defect, cat))
                continue
            mask = None
            if masks.is_dir():
                candidates = [masks / defect / f"{img.stem}{s}" for s in ("_mask.png", ".png")]
                mask = next((c for c in candidates if c.is_file()), None)
                if mask is None:
                    raise DatasetError(f"missing mask for {img}: expected {candidates[0]}")
            items.append(Item(img, 1, mask, defect, cat))
    if not any(i.label for i in items):
        raise DatasetError(f"{base}: no defect folders beside good/")
    return items


# ------------------------------------------------------------------ masks


class MaskLoader:
    """Ground-truth masks at evaluation size, as METHOD.md §1 prescribes.

    Binarise (> 0) at full resolution, resize bilinearly to the evaluation size, threshold
    at 0.5. A mask whose size differs from its image is first resized to the image with
    nearest-neighbour sampling (reported once per loader) when both have the same aspect
    ratio (within 1%); a different aspect ratio is an error in strict mode (a stretch
    would misplace the defect) and a warned stretch otherwise.
    """

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self._warned = False

    def load(self, item: Item, size: tuple[int, int]) -> np.ndarray:
        """`[H, W]` bool mask at `size` (all False for normal images)."""
        if item.mask is None:
            return np.zeros(size, dtype=bool)
        try:
            with Image.open(item.mask) as m:
                mask = np.asarray(m.convert("L")) > 0
            with Image.open(item.image) as im:
                image_size = im.size
        except OSError as exc:
            raise DatasetError(f"cannot read mask {item.mask}: {exc}") from None
        img = Image.fromarray(mask.astype(np.uint8) * 255)
        if img.size != image_size:
            (mw, mh), (iw, ih) = img.size, image_size
            stretched = abs((mw / mh) / (iw / ih) - 1) > 0.01
            described = f"mask {item.mask} is {mw}x{mh} but its image is {iw}x{ih}"
            if stretched and self.strict:
                raise DatasetError(
                    f"{described}: other aspect ratio, so the mask cannot be placed "
                    "(use --no-strict to stretch it)"
                )
            if not self._warned or stretched:
                how = "stretching it" if stretched else "resizing masks to their images"
                warnings.warn(f"{described}: {how} (nearest)", AnoclipWarning, stacklevel=2)
                self._warned = True
            img = img.resize(image_size, Image.NEAREST)
        h, w = size
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        return np.asarray(img, dtype=np.float32) / 255.0 > 0.5
