"""Encoding a batch of tiles: encoder, CLS views, test-time adaptation, visual tokens.

    tiles `[T, 3, S, S]` -> VVEncoder -> CLS `[T, C]`, V-V tokens `[T, nL, L, C]`
        -> CLS cosines `[T, V, 2]` (V = 22 augmented views or 1)
        -> TTA of the text branch (optional; per tile and layer) -> cosines `[T, nL, L, 2]`
        -> frozen visual tokens for the references `[T, nR, L, C]` (optional)

Plain functions with explicit parameters; the :class:`~anoclip.detector.Detector` only
passes them what it holds. Precision policy (`Runtime.precision`): "fp16"/"bf16" autocast on
CUDA; "bf16" autocast on the CPU too (AVX512-BF16 / AMX kernels where the CPU has them);
"int8": dynamic int8 Linear layers for the plain tower on the CPU (:mod:`anoclip.clip.plain`;
encoder and TTA stay float32). "fp32" is the default; the reduced precisions are opt-in
and move scores and maps (benchmarks/speed.py prints by how much).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from anoclip.clip.backbone import Backbone
from anoclip.clip.encoder import VVEncoder
from anoclip.clip.plain import PlainForward
from anoclip.clip.scoring import l2_normalize, text_cosines
from anoclip.clip.synth import Textures, synthesize
from anoclip.clip.text import TextBank
from anoclip.clip.tta import AdamState, TTAOverrides, adapt_tokens
from anoclip.clip.views import augmented_views
from anoclip.errors import UsageError
from anoclip.records import Features, Sample
from anoclip.settings import Precision, Settings, TTAKind

VIEW_CHUNK = 8  # augmented views per forward pass (int8 views: 249 vs 338 ms/view at 64 on
# an AVX2 EPYC; float32 the same within 2%)


def tiles_of(samples: Sequence[Sample], device: torch.device) -> torch.Tensor:
    """The tiles of `samples` as one batch `[T, 3, S, S]` on `device`."""
    return torch.cat([smp.tiles for smp in samples]).to(device, non_blocking=True)


def check_precision(device: torch.device, precision: Precision) -> None:
    """Refuse a precision this device cannot run fast: "fp16" off CUDA, "int8" on CUDA, and
    "bf16" on a CPU without bf16 kernels (oneDNN's check: AVX512 or AMX), where a bf16
    matmul runs hundreds of times slower than fp32 (0.28 vs 141 GFLOP/s measured on an
    AVX2 EPYC)."""
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("precision='fp16' runs on CUDA only; use bf16 or int8 on the CPU")
    if precision == "int8" and device.type != "cpu":
        raise UsageError("precision='int8' runs on the CPU only; use fp16/bf16 on CUDA")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise UsageError(
            "precision='bf16' needs a CPU with bf16 kernels (AVX512 / AMX); this one has "
            "none and would run far slower than fp32: use fp32 or int8"
        )


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively or by fast emulation (oneDNN's check)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast for "fp16"/"bf16" on CUDA and "bf16" on the CPU; a no-op otherwise
    (fp32, int8, fp16 on the CPU)."""
    if precision == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if device.type != "cuda" or precision not in ("fp16", "bf16"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def encode(
    backbone: Backbone,
    encoder: VVEncoder,
    x: torch.Tensor,
    bank: TextBank,
    settings: Settings,
    *,
    seed: int,
    tta: TTAKind = "noise",
    precision: Precision = "fp32",
    refs: bool = False,
    overrides: TTAOverrides | None = None,
    carry: AdamState | None = None,
    textures: Textures | None = None,
    plain: PlainForward | None = None,
) -> Features:
    """Encoder + text branch (+ TTA of kind `tta`) for tiles `x` `[T, 3, S, S]`.

    refs: also return the frozen visual-branch tokens. overrides: fixed TTA weights and
    noise (testing). carry: AdamW moments shared across calls (AnoVL quirk mode).
    plain: what runs the 21 augmented views (:func:`anoclip.clip.plain.plain_forward`; default
    open_clip's own forward).
    """
    s = settings
    layers = s.token_layers(encoder.depth)
    ref_kind, ref_layers = s.ref_tokens(encoder.depth) if refs else ("vv", ())
    vv_layers = sorted(set(layers) | (set(ref_layers) if ref_kind == "vv" else set()))
    ori_layers = ref_layers if ref_kind == "ori" else ()
    feats = bank.features.to(x.device)
    with torch.inference_mode(), autocast(x.device, precision):
        enc = encoder(x, vv_layers, ori_layers)
        views = s.image_score == "cls_aug22"
        cls_cos = cls_cosines(backbone, x, enc.cls, feats, views, plain)
    tokens = torch.stack([enc.vv[layer].float() for layer in layers], dim=1)  # [T, nL, L, C]
    n_tiles, n_layers, length, dim = tokens.shape
    tokens = tokens.reshape(n_tiles * n_layers, length, dim)
    if tta != "none" and s.tta_steps > 0:
        synth = None
        if tta in ("synth", "both"):
            synth = synthetic_tokens(backbone, encoder, x, layers, seed, textures, precision)
        tokens = adapt_tokens(
            tokens, feats, bank.sentences.to(x.device), s, torch.Generator().manual_seed(seed),
            overrides, carry, synth=synth, use_noise=tta in ("noise", "both"),
        )  # fmt: skip
    with torch.inference_mode():
        text_cos = text_cosines(tokens, feats).view(n_tiles, n_layers, length, 2)
        ref_tokens = None
        if refs:
            source = enc.vv if ref_kind == "vv" else enc.ori
            ref_tokens = l2_normalize(
                torch.stack([source[layer].float() for layer in ref_layers], dim=1)
            )
    return Features(text_cos, cls_cos, enc.cls.float(), enc.grid, ref_tokens)


def cls_cosines(
    backbone: Backbone,
    x: torch.Tensor,
    cls: torch.Tensor,
    feats: torch.Tensor,
    views: bool,
    plain: PlainForward | None = None,
) -> torch.Tensor:
    """Text cosines of the CLS per tile and view `[T, V, 2]`: the identity view's CLS
    (V = 1), plus the 21 augmented views through the plain tower when `views` (V = 22),
    `VIEW_CHUNK` views per call of `plain` (images `[B, 3, S, S]` -> CLS `[B, C]`, see
    :func:`anoclip.clip.plain.plain_forward`; default: open_clip's own ``visual``)."""
    if not views:
        return text_cosines(cls.float().unsqueeze(1), feats)
    augmented = augmented_views(x)[:, 1:]  # the identity view's CLS is `cls`
    n, v = augmented.shape[:2]
    flat = augmented.reshape(n * v, *augmented.shape[2:])
    forward = plain or backbone.model.visual
    embs = torch.cat([forward(chunk) for chunk in flat.split(VIEW_CHUNK)])
    all_cls = torch.cat([cls.unsqueeze(1), embs.view(n, v, -1).to(cls.dtype)], dim=1)
    return text_cosines(all_cls.float(), feats)


def synthetic_tokens(
    backbone: Backbone,
    encoder: VVEncoder,
    x: torch.Tensor,
    layers: Sequence[int],
    seed: int,
    textures: Textures | None = None,
    precision: Precision = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens `[T·nL, L, C]` of a synthesized-anomaly version of every tile of `x`, and
    their labels `[T·nL, L]`. The same seeded draw serves every tile (batch invariance)."""
    mean = torch.tensor(backbone.mean, device=x.device).view(3, 1, 1)
    std = torch.tensor(backbone.std, device=x.device).view(3, 1, 1)
    start = torch.Generator().manual_seed(seed + 1)
    texture = (textures or Textures(None)).draw(start, tuple(x.shape[-2:]), x.device)
    images, labels = [], []
    for tile in x:
        g = torch.Generator()
        g.set_state(start.get_state())
        syn = synthesize((tile.float() * std + mean).clamp(0, 1), encoder.grid, g, texture)
        images.append((syn.image - mean) / std)
        labels.append(syn.labels)
    with torch.inference_mode(), autocast(x.device, precision):
        enc = encoder(torch.stack(images).to(x.dtype), layers)
    tokens = torch.stack([enc.vv[layer].float() for layer in layers], dim=1)
    n_tiles, n_layers, length, dim = tokens.shape
    lab = torch.stack(labels)[:, None].expand(n_tiles, n_layers, length)
    return tokens.reshape(-1, length, dim).clone(), lab.reshape(-1, length).clone()
