"""Run an exported anoclip scorer with numpy + Pillow + one runtime, and no torch.

This file is self-contained: `anoclip export` copies it next to the exported model as
``anoclip_engine_helper.py``, so a machine with only ``numpy``, ``Pillow`` and
``onnxruntime`` (for ``.onnx``) or ``openvino`` (for ``.xml``) can score images:

    python anoclip_engine_helper.py screw.onnx img1.png img2.png --out maps/
    # prints "source,score" rows; --out writes maps/<stem>.npy (float32 [H, W])

or from Python:

    import anoclip_engine_helper as h
    for source, score, amap in h.score_files("screw.onnx", ["img1.png"]):
        ...

The exported graph (see ``anoclip.deploy.convert``) maps normalised images `[B, 3, S, S]` to image
scores `[B]` and anomaly maps at model resolution `[B, S, S]`. Around it, this helper does
what anoclip's PyTorch pipeline does for square inputs (``tiling="none"``):

    preprocess:  RGB (EXIF orientation applied) -> PIL bilinear resize to S×S
                 -> x = (pixels / 255 − mean) / std  per channel, float32, CHW
    postprocess: map `[S, S]` -> bilinear resize to the image's (H, W) with half-pixel
                 centres (torch's ``interpolate(align_corners=False)``, no antialias)
                 -> clipped to [0, 1]

S, mean and std come from the JSON sidecar written beside the model (``<stem>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

HELPER_NAME = "anoclip_engine_helper.py"
SIDECAR_SUFFIX = ".json"
FORMAT = "anoclip-zero-shot-scorer"

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """`screw.onnx` / `screw.xml` -> `screw.json` (the export's metadata)."""
    return Path(model_path).with_suffix(SIDECAR_SUFFIX)


def read_meta(model_path: str | os.PathLike) -> dict:
    """The sidecar of an exported model: object, image_size S, mean, std, views, ..."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the export's sidecar is missing (re-export the model)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an anoclip export sidecar (format {meta.get('format')!r})")
    return meta


def load_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image file into 8-bit RGB, EXIF orientation applied.

    8-bit files decode as in anoclip; 16-bit and float files are converted by Pillow here,
    whereas anoclip rescales their range (``anoclip.data.images.to_rgb``): convert such images
    to 8-bit beforehand, or use ``anoclip.deploy.engine.Engine``, which decodes as anoclip does.
    """
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


def preprocess(
    img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """RGB image -> normalised model input `[3, S, S]` float32 (S = `size`).

    x = (resize_bilinear(img, S×S) / 255 − mean) / std, per channel.
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    resized = np.asarray(rgb.resize((size, size), Image.BILINEAR), np.uint8)
    x = resized.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis, half-pixel centres (torch, align_corners=False):

    src = max((i + 0.5)·n_in/n_out − 0.5, 0);  i0 = ⌊src⌋, i1 = min(i0 + 1, n_in − 1);
    out[i] = (1 − λ)·in[i0] + λ·in[i1] with λ = src − i0.

    Rounded as torch rounds it for float32 maps (a float32 scale, src evaluated in float64
    and stored as float32); other roundings of src differ by up to ~1e-5.
    """
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    src = (scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    return i0, i1, lam


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map `[h, w]` to `size` = (H, W) (float32; as is when equal).

    out = (1 − λ_h)·(row i0 along W) + λ_h·(row i1 along W), each row interpolated along
    W first, in torch's order.
    """
    x = np.asarray(m, np.float32)
    if tuple(x.shape) == tuple(size):
        return x
    r0, r1, rl = _axis_weights(x.shape[0], size[0])
    c0, c1, cl = _axis_weights(x.shape[1], size[1])
    one = np.float32(1.0)
    cols = x[:, c0] * (one - cl) + x[:, c1] * cl  # [h, W]
    return cols[r0] * (one - rl)[:, None] + cols[r1] * rl[:, None]


def capped_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """(H, W) scaled so that its longest side is at most `max_side` (None or 0: as is)."""
    h, w = size
    if not max_side or max(h, w) <= max_side:
        return size
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def postprocess(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Model-resolution map `[S, S]` -> `[H, W]` float32 map in [0, 1]."""
    return np.clip(resize_map(m, size), 0.0, 1.0).astype(np.float32)


def open_runner(model_path: str | os.PathLike, threads: int | None = None) -> Runner:
    """A function images `[B, 3, S, S]` -> (scores `[B]`, maps `[B, S, S]`) for `.onnx`
    (onnxruntime, CPU) or `.xml` (OpenVINO, CPU, float32 inference precision)."""
    path = Path(model_path)
    if path.suffix == ".onnx":
        return _onnxruntime_runner(path, threads)
    if path.suffix == ".xml":
        return _openvino_runner(path, threads)
    raise ValueError(f"{path}: expected an exported .onnx or .xml file")


def _onnxruntime_runner(path: Path, threads: int | None) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ImportError(
            f"running {path.name} needs onnxruntime: pip install onnxruntime "
            "(or pip install anoclip[export])"
        ) from exc
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, amap = session.run(None, {name: np.ascontiguousarray(images, np.float32)})
        return score, amap

    return run


def _openvino_runner(path: Path, threads: int | None) -> Runner:
    try:
        import openvino as ov
    except ImportError as exc:
        raise ImportError(
            f"running {path.name} needs OpenVINO: pip install openvino "
            "(or pip install anoclip[export])"
        ) from exc
    # f32 explicitly: OpenVINO's CPU plugin defaults to bf16 on CPUs that support it.
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = compiled(np.ascontiguousarray(images, np.float32))
        return np.asarray(out[0]), np.asarray(out[1])

    return run


def score_files(
    model_path: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    batch_size: int = 8,
    max_map_side: int | None = None,
    threads: int | None = None,
) -> Iterator[tuple[str, float, np.ndarray]]:
    """(source, image score, map `[H, W]` at the image's size) per image file, in order."""
    meta = read_meta(model_path)
    run = open_runner(model_path, threads)
    size, mean, std = int(meta["image_size"]), meta["mean"], meta["std"]
    paths = [str(p) for p in paths]
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = [load_image(p) for p in chunk]
        x = np.stack([preprocess(img, size, mean, std) for img in images])
        scores, maps = run(x)
        for p, img, score, m in zip(chunk, images, scores, maps):
            full = capped_size((img.height, img.width), max_map_side)
            yield p, float(score), postprocess(m, full)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Score images with an exported anoclip model.")
    parser.add_argument("model", help="exported .onnx or .xml (its .json sidecar beside it)")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--out", default=None, help="folder for <stem>.npy maps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-map-side", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    print("source,score")
    results = score_files(args.model, args.images, args.batch_size, args.max_map_side, args.threads)
    for source, score, amap in results:
        print(f"{source},{score:.8f}")
        if out:
            np.save(out / f"{Path(source).stem}.npy", amap)
    return 0


if __name__ == "__main__":
    sys.exit(main())
