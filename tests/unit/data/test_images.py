"""Decoding user inputs: modes, bit depths, arrays and broken files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anoclip.data.images import ImageDecodeError, load_rgb


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
