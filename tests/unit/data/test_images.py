"""Decoding user inputs: modes, bit depths, arrays and broken files."""

from __future__ import annotations

import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from anoclip.data.images import MAX_MEGAPIXELS_ENV, ImageDecodeError, load_rgb
from anoclip.data.loading import _file_size
from anoclip.errors import AnoclipWarning


def save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey = rgb[..., 0]
    cases = {
        "grey.png": Image.fromarray(grey, "L"),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)]), "RGBA"),
        "pal.png": Image.fromarray(rgb).convert("P"),
        "la.png": Image.fromarray(grey, "L").convert("LA"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    for name, img in cases.items():
        out = load_rgb(save(tmp_path, name, img))
        assert out.mode == "RGB" and out.size == (30, 20), name
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "grey.png"))[..., 1], grey)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "rgba.png")), rgb)


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 16).reshape(16, 64)).astype(np.uint16)
    path = save(tmp_path, "deep.png", Image.fromarray(ramp))
    out = np.asarray(load_rgb(path))[..., 0].astype(int)
    want = np.rint(ramp / 65535 * 255).astype(int)
    assert np.abs(out - want).max() <= 1
    assert out.max() == 255 and out.min() == 0 and len(np.unique(out)) > 200


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty file"), (b"hello, not an image", "not a recognised image"), (None, "truncated")],
)
def test_broken_files(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    if content is None:
        good = save(tmp_path, "good.png", Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90))
        content = good.read_bytes()[:-40]
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason):
        load_rgb(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="not found"):
        load_rgb(tmp_path / "nope.png")


def test_arrays_and_tensors():
    u8 = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_rgb(u8)), u8)
    assert np.array_equal(np.asarray(load_rgb(u8.astype(np.float32) / 255.0)), u8)
    assert np.array_equal(np.asarray(load_rgb(torch.from_numpy(u8).permute(2, 0, 1))), u8)
    u16 = u8[..., 0].astype(np.uint16) * 257
    assert np.array_equal(np.asarray(load_rgb(u16))[..., 0], u8[..., 0])
    assert load_rgb(np.ones((4, 4), bool)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageDecodeError):
        load_rgb(np.zeros((4, 4, 2)))
    with pytest.raises(ImageDecodeError):
        load_rgb(np.full((4, 4), np.nan))
    with pytest.raises(ImageDecodeError):
        load_rgb(12)


def test_exif_orientation_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_rgb(path).size == (10, 20)


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    """A 15000×15000 (225-megapixel) JPEG: one grey level, so 2.6 MB and 0.6 s to make."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.new("L", (15000, 15000), 90).save(path, quality=50)
    return path


def fresh(path, tmp_path):
    """`path` under a new name (images warn once per path)."""
    os.link(path, tmp_path / path.name)
    return tmp_path / path.name


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale_with_one_warning(huge_jpeg, tmp_path):
    path = fresh(huge_jpeg, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert load_rgb(path, max_pixels=4_000_000).size == (3750, 3750)  # 1/4 scale
        assert load_rgb(path, max_pixels=4_000_000).size == (3750, 3750)
        assert _file_size(path) == (15000, 15000)  # the header's size, for the maps
    shown = [str(w.message) for w in caught if issubclass(w.category, AnoclipWarning)]
    assert len(shown) == 1 and "225 megapixels: decoded at 1/4 scale (3750×3750)" in shown[0]
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_a_jpeg_above_the_limit_is_refused_naming_the_override(huge_jpeg, monkeypatch):
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "200")
    with pytest.raises(ImageDecodeError) as err:
        load_rgb(huge_jpeg)
    assert str(err.value) == (
        "15000×15000 = 225 megapixels, above the limit of 200 megapixels (set the "
        "environment variable ANOCLIP_MAX_MEGAPIXELS to raise it)"
    )
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "lots")
    with pytest.raises(ImageDecodeError, match="ANOCLIP_MAX_MEGAPIXELS='lots' is not a pos"):
        load_rgb(huge_jpeg)
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "0.001")  # the limit applies to small images too
    with pytest.raises(ImageDecodeError, match="above the limit of 0.001 megapixels"):
        load_rgb(save(huge_jpeg.parent, "small.jpg", Image.new("RGB", (64, 64))))


def test_a_huge_png_is_refused_in_one_line(tmp_path):
    """Other formats are decoded whole: Pillow's limit, said plainly (a 20000×20000 header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(ImageDecodeError) as err:
        load_rgb(path)
    assert str(err.value).startswith(
        "400 megapixels, more than the 179 megapixels Pillow decodes whole; only JPEGs are "
        "decoded at a reduced scale"
    ), err.value
