"""Reading user images (paths, PIL images, arrays) into 8-bit RGB, with clear errors.

Handles grayscale, RGBA/LA (alpha dropped), palette, 16-bit and float inputs, and EXIF
orientation. A file that cannot be decoded raises :class:`ImageDecodeError` whose message
says why (zero bytes, truncated, not an image...).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from anoclip.errors import AnoclipWarning, ImageDecodeError

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


def load_rgb(source: ImageInput, max_pixels: int | None = None) -> Image.Image:
    """Decode `source` into an 8-bit RGB PIL image (EXIF orientation applied for files).

    max_pixels: JPEG files larger than this are decoded at a reduced scale (draft mode:
    the smallest power-of-two reduction that keeps at least `max_pixels`), which bounds
    memory for huge photos; other formats are decoded whole.
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


def _open_file(path: Path, max_pixels: int | None = None) -> Image.Image:
    if not path.exists():
        raise ImageDecodeError("file not found")
    if path.is_dir():
        raise ImageDecodeError("is a directory")
    if path.stat().st_size == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                pixels = img.width * img.height
                if max_pixels and pixels > max_pixels and img.format == "JPEG":
                    f = (max_pixels / pixels) ** 0.5
                    img.draft("RGB", (max(1, int(img.width * f)), max(1, int(img.height * f))))
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = to_rgb(img)
        for w in caught:
            if issubclass(w.category, Image.DecompressionBombWarning):
                warnings.warn(
                    f"{path} has {pixels / 1e6:.0f} megapixels: decoding it needs about "
                    f"{3 * pixels / 2**30:.1f} GB; maps are written at most --max-map-side wide",
                    AnoclipWarning,
                    stacklevel=3,
                )
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return rgb
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in msg.lower():
            msg = f"truncated image data ({msg})"
        raise ImageDecodeError(msg) from None


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
