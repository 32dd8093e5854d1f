"""Reading user images (paths, PIL images, arrays) into 8-bit RGB, with clear errors.

Handles grayscale, RGBA/LA (alpha dropped), palette, 16-bit and float inputs, and EXIF
orientation. A file that cannot be decoded raises :class:`ImageDecodeError` whose message
says why (zero bytes, truncated, not an image...).

Huge images. JPEG files above :data:`DRAFT_PIXELS` are decoded at a reduced scale (JPEG
draft mode: 1/2, 1/4 or 1/8, keeping at least that many pixels), which bounds memory, up
to the limit :func:`max_megapixels` (default :data:`DEFAULT_MAX_MEGAPIXELS`, raised or
lowered with the environment variable ``ANOCLIP_MAX_MEGAPIXELS``); a larger image is
refused with a message naming both. Other formats are decoded whole, so Pillow's own limit
(``2 × PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels) applies to them as well. An
image above Pillow's warning size (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 megapixels)
gets one :class:`AnoclipWarning` per process, however often it is decoded.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from anoclip.errors import AnoclipWarning, ImageDecodeError

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

DRAFT_PIXELS = 64 * 2**20  # JPEG files above this many pixels are decoded at a reduced scale
MAX_MEGAPIXELS_ENV = "ANOCLIP_MAX_MEGAPIXELS"
DEFAULT_MAX_MEGAPIXELS = 1024  # the largest image decoded (JPEGs: at a reduced scale)
_JPEG_MAGIC = b"\xff\xd8\xff"
_PIL_WARNINGS = threading.Lock()  # catch_warnings is process-wide: one thread at a time
_WARNED: set[str] = set()  # images already reported as huge (one warning per image)


def load_rgb(source: ImageInput, max_pixels: int | None = DRAFT_PIXELS) -> Image.Image:
    """Decode `source` into an 8-bit RGB PIL image (EXIF orientation applied for files).

    max_pixels: JPEG files larger than this are decoded at a reduced scale (draft mode:
    the smallest power-of-two reduction that keeps at least `max_pixels`), which bounds
    memory for huge photos; None decodes them whole. Other formats are decoded whole.
    """
    if isinstance(source, (str, os.PathLike)):
        return _open_file(Path(source), max_pixels)
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, torch.Tensor):
        source = _tensor_to_hwc(source)
    if isinstance(source, np.ndarray):
        return to_rgb(Image.fromarray(_array_to_uint8(source)))
    raise ImageDecodeError(f"unsupported image type {type(source).__name__}")


def open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open(path)`` without Pillow's decompression-bomb warning (:func:`load_rgb`
    reports huge images, once) and, for JPEG files, without its bomb error: they are
    decoded at a reduced scale, up to :func:`max_megapixels`. Raises what Image.open does."""
    with _PIL_WARNINGS, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError:
            with open(path, "rb") as f:
                if f.read(len(_JPEG_MAGIC)) != _JPEG_MAGIC:
                    raise
            return JpegImagePlugin.JpegImageFile(path)


def max_megapixels() -> float:
    """The largest image :func:`load_rgb` decodes, in megapixels: ``ANOCLIP_MAX_MEGAPIXELS``
    when set, else :data:`DEFAULT_MAX_MEGAPIXELS`."""
    raw = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    if not raw:
        return float(DEFAULT_MAX_MEGAPIXELS)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:  # NaN too
        raise ImageDecodeError(
            f"{MAX_MEGAPIXELS_ENV}={raw!r} is not a positive number of megapixels"
        )
    return value


def _open_file(path: Path, max_pixels: int | None = None) -> Image.Image:
    if not path.exists():
        raise ImageDecodeError("file not found")
    if path.is_dir():
        raise ImageDecodeError("is a directory")
    if path.stat().st_size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with open_image(path) as img:
            pixels = img.width * img.height
            _check_size(img, pixels)
            size = img.size
            if max_pixels and pixels > max_pixels and img.format == "JPEG":
                f = (max_pixels / pixels) ** 0.5
                img.draft("RGB", (max(1, int(img.width * f)), max(1, int(img.height * f))))
            img.load()
            _warn_huge(path, size, img.size)
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(_bomb_reason(exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in msg.lower():
            msg = f"truncated image data ({msg})"
        raise ImageDecodeError(msg) from None


def _check_size(img: Image.Image, pixels: int) -> None:
    """Refuse an image above :func:`max_megapixels`, naming the limit and its override."""
    limit = max_megapixels()
    if pixels > limit * 1e6:
        raise ImageDecodeError(
            f"{img.width}×{img.height} = {pixels / 1e6:.0f} megapixels, above the limit of "
            f"{limit:g} megapixels (set the environment variable {MAX_MEGAPIXELS_ENV} to "
            "raise it)"
        )


def _bomb_reason(exc: Image.DecompressionBombError) -> str:
    """Pillow's refusal of a huge image it would decode whole, in anoclip's words."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.0f} megapixels, " if found else ""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
    return (
        f"{size}more than the {limit:.0f} megapixels Pillow decodes whole; only JPEGs are "
        f"decoded at a reduced scale (up to {MAX_MEGAPIXELS_ENV}, default "
        f"{DEFAULT_MAX_MEGAPIXELS}): convert it to JPEG"
    )


def _warn_huge(path: Path, size: tuple[int, int], decoded: tuple[int, int]) -> None:
    """One AnoclipWarning per image (per process) above Pillow's warning size."""
    pixels = size[0] * size[1]
    if Image.MAX_IMAGE_PIXELS is None or pixels <= Image.MAX_IMAGE_PIXELS:
        return
    key = os.path.abspath(path)
    with _PIL_WARNINGS:
        if key in _WARNED:
            return
        _WARNED.add(key)
    if decoded != size:
        how = f"decoded at 1/{round(size[0] / decoded[0])} scale ({decoded[0]}×{decoded[1]})"
    else:
        how = f"decoding it needs about {3 * pixels / 2**30:.1f} GB"
    warnings.warn(
        f"{path} has {pixels / 1e6:.0f} megapixels: {how}; maps are written at most "
        "--max-map-side wide",
        AnoclipWarning,
        stacklevel=4,
    )


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB. 16-bit/int/float images are rescaled, not clipped."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("1", "L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")
    # 16-bit ("I;16", "I;16B"...), 32-bit int ("I") and float ("F") single-channel images
    arr = np.asarray(img)
    return Image.fromarray(_array_to_uint8(arr)).convert("RGB")


def _tensor_to_hwc(t: torch.Tensor) -> np.ndarray:
    arr = t.detach().cpu().numpy()
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    return arr


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """[H, W] or [H, W, C] array of any numeric dtype -> uint8 (C in 1, 3, 4)."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageDecodeError(f"array of shape {arr.shape} is not an H×W or H×W×{{1,3,4}} image")
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.size == 0:
        raise ImageDecodeError("empty image")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if not np.issubdtype(arr.dtype, np.number):
        raise ImageDecodeError(f"unsupported array dtype {arr.dtype}")
    x = arr.astype(np.float64)
    if not np.isfinite(x).all():
        raise ImageDecodeError("image contains NaN or infinite values")
    if np.issubdtype(arr.dtype, np.floating):
        scale = 1.0 if x.max() <= 1.0 else (255.0 if x.max() <= 255.0 else 65535.0)
    else:
        scale = 255.0 if x.max() <= 255 else 65535.0
    return np.clip(np.rint(x / scale * 255.0), 0, 255).astype(np.uint8)


def source_name(source: ImageInput, index: int) -> str:
    """What a prediction reports as its source: the path as given, else the index."""
    return str(source) if isinstance(source, (str, os.PathLike)) else str(index)
