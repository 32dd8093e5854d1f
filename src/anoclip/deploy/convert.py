"""Exporting the single-image zero-shot scorer of a :class:`Detector` (ONNX, OpenVINO).

What is exported is AnoCLIP in mode "anoclip" without TTA (METHOD.md §2.1, §2.4) for one
object, its text embeddings F `[C, 2]` baked in as constants:

    images `[B, 3, S, S]` (normalised, B dynamic)
        -> VVEncoder -> V-V tokens T_l `[B, L, C]` per scored layer, CLS `[B, C]`
        -> map   = mean_l tile_maps(n(T_l)·F)                          `[B, S, S]`
        -> score = (1/V) Σ_v p_a(CLS_v),  p_a(e) = softmax(n(e)·F/τ)_a  `[B]`

V = 1 (the identity view, default) or 22 (the augmented views of :mod:`anoclip.clip.views`,
affine grid sampling, ONNX GridSample: opset ≥ 16). The extra 21 views go through the
plain tower, as :func:`anoclip.clip.features.cls_cosines` does, but as one batch: splitting a
dynamic batch into fixed chunks cannot be traced.

Files written for ``path = DIR/screw.onnx`` (or ``DIR/screw.xml``):

    DIR/screw.onnx | DIR/screw.xml + DIR/screw.bin   the model (float32)
    DIR/screw.json                                    the sidecar (:func:`metadata`)
    DIR/anoclip_engine_helper.py                      numpy + Pillow pre/post-processing
                                                      and a runner (:mod:`engine_helper`)

Exporter: ``torch.onnx.export(dynamo=True)`` (the default of torch ≥ 2.9; opset 20 here).
The legacy TorchScript exporter handles V = 1 at opset 17 but fails on V = 22
(``aten::affine_grid_generator`` needs opset 20), so the dynamo exporter is used for both.
OpenVINO files are converted from the ONNX file (``ov.convert_model``) and saved without
fp16 compression.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from anoclip import __version__
from anoclip.clip.encoder import VVEncoder
from anoclip.clip.prompts import is_texture, prompt_name
from anoclip.clip.scoring import probs_from_cosines, text_cosines, tile_maps
from anoclip.clip.views import NUM_VIEWS, augmented_views
from anoclip.data import standalone as engine_helper
from anoclip.errors import AnoclipError, UsageError
from anoclip.extras import require
from anoclip.settings import fingerprint

if TYPE_CHECKING:
    from anoclip.detector import Detector

ExportFormat = Literal["onnx", "openvino"]
FORMATS: dict[str, ExportFormat] = {".onnx": "onnx", ".xml": "openvino"}
INPUT_NAME = "images"
OUTPUT_NAMES = ("score", "map")
CHECK_TOLERANCE = 1e-4
_EXTERNAL_DATA_ABOVE = 1.5 * 2**30  # bytes of weights; ONNX protobufs stop at 2 GiB


class ExportError(AnoclipError, RuntimeError):
    """The model cannot be exported, or the exported file disagrees with PyTorch."""


class ZeroShotScorer(nn.Module):
    """AnoCLIP's single-image text-branch scorer as one module (no TTA, square tiles).

    forward: images `[B, 3, S, S]` -> (score `[B]`, map `[B, S, S]`), see the module doc.
    """

    def __init__(
        self,
        encoder: VVEncoder,
        text_features: torch.Tensor,
        *,
        layers: Sequence[int],
        tile: int,
        temperature: float,
        sigma: float = 0.0,
        views: int = 1,
    ) -> None:
        super().__init__()
        if views not in (1, NUM_VIEWS):
            raise UsageError(f"views must be 1 or {NUM_VIEWS}, got {views}")
        self.encoder = encoder
        self.register_buffer("text_features", text_features.detach().float().clone())
        self.layers = tuple(layers)
        self.tile, self.temperature, self.sigma, self.views = tile, temperature, sigma, views

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.text_features
        enc = self.encoder(images, self.layers)
        tokens = torch.stack([enc.vv[layer] for layer in self.layers], dim=1)  # [B, nL, L, C]
        maps = tile_maps(text_cosines(tokens, feats), enc.grid, self.tile, self.temperature,
                         self.sigma)  # fmt: skip
        cls_cos = text_cosines(enc.cls.unsqueeze(1), feats)  # [B, 1, 2]
        if self.views > 1:
            cls_cos = torch.cat([cls_cos, self._augmented_cosines(images)], dim=1)
        return probs_from_cosines(cls_cos, self.temperature).mean(dim=1), maps

    def _augmented_cosines(self, images: torch.Tensor) -> torch.Tensor:
        """Cosines `[B, 21, 2]` of the plain tower's CLS of views 1..21."""
        augmented = augmented_views(images)[:, 1:]  # [B, 21, 3, S, S]
        b, v = augmented.shape[:2]
        embs = self.encoder.visual(augmented.reshape(b * v, *augmented.shape[2:]))
        return text_cosines(embs.reshape(b, v, -1), self.text_features)


def scorer_for(detector: Detector, object_name: str, views: int = 1) -> ZeroShotScorer:
    """The :class:`ZeroShotScorer` of `detector` for `object_name` (shares its weights)."""
    s = detector.settings
    if s.tiling != "none":
        raise UsageError(
            f"export scores square inputs only (tiling='none'), not tiling={s.tiling!r}"
        )
    bank = detector.text_bank(object_name)
    return ZeroShotScorer(
        detector.encoder,
        bank.features,
        layers=s.token_layers(detector.encoder.depth),
        tile=detector.backbone.image_size,
        temperature=s.temperature,
        sigma=s.gaussian_sigma,
        views=views,
    ).eval()


@dataclass(frozen=True)
class ExportResult:
    """Paths written by :func:`export_model`, and the self-check's max |Δ| (None: skipped)."""

    model: Path
    sidecar: Path
    helper: Path
    files: tuple[Path, ...]
    max_abs_diff: float | None


def format_of(path: str | os.PathLike, fmt: ExportFormat | None = None) -> ExportFormat:
    """The export format of `path` (.onnx -> onnx, .xml -> openvino), or check `fmt`."""
    suffix = Path(path).suffix.lower()
    if fmt is None:
        if suffix not in FORMATS:
            raise UsageError(f"{path}: name the file .onnx (ONNX) or .xml (OpenVINO)")
        return FORMATS[suffix]
    if FORMATS.get(suffix) != fmt:
        want = next(k for k, v in FORMATS.items() if v == fmt)
        raise UsageError(f"{path}: a {fmt} export must be named *{want}")
    return fmt


def export_model(
    detector: Detector,
    object_name: str,
    path: str | os.PathLike,
    *,
    fmt: ExportFormat | None = None,
    views: int = 1,
    opset: int | None = None,
    check: bool = True,
) -> ExportResult:
    """Export the zero-shot scorer of `detector` for `object_name` to `path`.

    fmt: "onnx" or "openvino" (default: from the suffix, .onnx or .xml). views: 1 (CLS of
    the image) or 22 (augmented views, METHOD.md §2.4). opset: ONNX opset (default: the
    exporter's; ≥ 16 for 22 views). check: run the exported file on two random images and
    raise :class:`ExportError` when scores or maps differ from PyTorch by more than 1e-4.
    """
    fmt = format_of(path, fmt)
    require("onnx", "export", "exporting a model")
    require("onnxscript", "export", "exporting a model")
    if fmt == "openvino":
        require("openvino", "export", "exporting to OpenVINO")
    if views == NUM_VIEWS and opset is not None and opset < 16:
        raise UsageError(f"22 views need ONNX GridSample: opset >= 16, not {opset}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    module = scorer_for(detector, object_name, views)
    example = _example_input(detector, batch=2)
    if fmt == "onnx":
        files = export_onnx(module, example, target, opset)
        opset = onnx_opset(target)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            export_onnx(module, example, onnx_path, opset)
            opset = onnx_opset(onnx_path)
            files = to_openvino(onnx_path, target)
    sidecar, helper = _write_companions(target, metadata(detector, object_name, views, fmt, opset))
    diff = check_export(module, target, example) if check else None
    return ExportResult(target, sidecar, helper, (*files, sidecar, helper), diff)


def openvino_from_onnx(
    onnx_path: str | os.PathLike, xml_path: str | os.PathLike, check: bool = True
) -> ExportResult:
    """Convert an exported ``.onnx`` (sidecar beside it) to OpenVINO ``.xml`` + ``.bin``
    with its own sidecar and helper. check: compare both on two random images (OpenVINO
    vs onnxruntime, max |Δ| ≤ 1e-4, else :class:`ExportError`)."""
    source, target = Path(onnx_path), Path(xml_path)
    format_of(source, "onnx"), format_of(target, "openvino")
    meta = {**engine_helper.read_meta(source), "engine": "openvino"}
    target.parent.mkdir(parents=True, exist_ok=True)
    files = to_openvino(source, target)
    sidecar, helper = _write_companions(target, meta)
    diff = None
    if check:
        size = int(meta["image_size"])
        x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
        want = engine_helper.open_runner(source)(x)
        got = engine_helper.open_runner(target)(x)
        diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
        if not diff <= CHECK_TOLERANCE:
            raise ExportError(f"{target}: OpenVINO differs from onnxruntime by {diff:.3g}")
    return ExportResult(target, sidecar, helper, (*files, sidecar, helper), diff)


def _write_companions(target: Path, meta: dict) -> tuple[Path, Path]:
    """Write the sidecar `<stem>.json` and copy the helper beside `target`."""
    sidecar = engine_helper.sidecar_path(target)
    _atomic_text(sidecar, json.dumps(meta, indent=2))
    helper = target.parent / engine_helper.HELPER_NAME
    shutil.copyfile(engine_helper.__file__, helper)
    return sidecar, helper


def export_onnx(
    module: nn.Module, example: torch.Tensor, path: Path, opset: int | None = None
) -> tuple[Path, ...]:
    """`module` -> ONNX file at `path` with a dynamic batch axis (dynamo exporter).

    Weights above 1.5 GiB go to `path`.data (ONNX external data). Returns the files.
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes > _EXTERNAL_DATA_ABOVE
    try:
        torch.onnx.export(
            module, (example,), str(path), dynamo=True, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: batch}}, external_data=external, verbose=False,
        )  # fmt: skip
    except Exception as exc:  # the exporter raises many types; name the step that failed
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    data = path.with_name(path.name + ".data")
    return (path, data) if data.exists() else (path,)


def to_openvino(onnx_path: Path, xml_path: Path) -> tuple[Path, Path]:
    """ONNX file -> OpenVINO IR (`.xml` + `.bin`), weights kept in float32."""
    ov = require("openvino", "export", "exporting to OpenVINO")
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path, xml_path.with_suffix(".bin")


def onnx_opset(path: Path) -> int | None:
    """The default-domain opset of an ONNX file (None for other files)."""
    if path.suffix != ".onnx" or not path.exists():
        return None
    onnx = require("onnx", "export", "reading an ONNX file")
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def metadata(
    detector: Detector, object_name: str, views: int, fmt: ExportFormat, opset: int | None
) -> dict:
    """The sidecar: what the file computes and how to feed it (JSON-ready)."""
    bb, s = detector.backbone, detector.settings
    size = bb.image_size
    return {
        "format": engine_helper.FORMAT,
        "format_version": 1,
        "object": object_name,
        "prompt_name": prompt_name(object_name, s.class_names),
        "class_names": s.class_names,
        "texture": is_texture(object_name, s.domain),
        "model": bb.name,
        "pretrained": bb.pretrained,
        "random_weights": bb.random_weights,
        "seed": bb.seed,
        "image_size": size,
        "mean": list(bb.mean),
        "std": list(bb.std),
        "views": views,
        "image_score": "cls" if views == 1 else "cls_aug22",
        "mode": "anoclip",
        "tta": "none",
        "engine": fmt,
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32"},
        "outputs": {
            "score": {"shape": ["batch"], "dtype": "float32"},
            "map": {"shape": ["batch", size, size], "dtype": "float32"},
        },
        "anoclip_version": __version__,
        "torch_version": torch.__version__,
        "fingerprint": scorer_fingerprint(detector, object_name, views),
    }


def scorer_fingerprint(detector: Detector, object_name: str, views: int) -> dict:
    """What determines the exported file's results, in :meth:`Detector.fingerprint`'s form
    for mode "anoclip" without TTA and the image score the file computes, so thresholds
    calibrated on the file and on the Detector (``tta=False``) carry the same settings."""
    bb = detector.backbone
    weights = Path(bb.pretrained)
    pretrained = str(weights.resolve()) if weights.is_file() else bb.pretrained
    settings = replace(detector.settings, image_score="cls" if views == 1 else "cls_aug22")
    return fingerprint(
        settings, model=bb.name, pretrained=pretrained, seed=detector.seed,
        object=object_name, mode="anoclip", refs=None, tta="none",
    )  # fmt: skip


def check_export(
    module: ZeroShotScorer, path: Path, example: torch.Tensor, tolerance: float = CHECK_TOLERANCE
) -> float:
    """Max |Δ| of scores and maps between the exported file and `module` on `example`;
    raises :class:`ExportError` above `tolerance`."""
    with torch.inference_mode():
        ref = [t.cpu().numpy() for t in module(example)]
    got = engine_helper.open_runner(path)(example.cpu().numpy())
    diff = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    if not diff <= tolerance:
        raise ExportError(f"{path}: exported outputs differ from PyTorch by {diff:.3g}")
    return diff


def _example_input(detector: Detector, batch: int) -> torch.Tensor:
    """Random normalised images `[batch, 3, S, S]` (batch ≥ 2: size 1 would be specialised)."""
    size = detector.backbone.image_size
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=gen).to(detector.device)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
