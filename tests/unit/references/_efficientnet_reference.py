"""An independent EfficientNet-Lite forward pass, written from the paper's architecture and
reading EfficientNet-PyTorch names (`_conv_stem`, `_blocks.N._expand_conv`, ...) directly.

It shares no code with timm or with anoclip's name converter, so agreement with timm on
converted weights proves the mapping. Lite: no squeeze-excitation, ReLU6, TF "SAME" padding,
batch-norm eps 1e-3. Strides per stage (EfficientNet-B0 / Lite0 table): 1, 2, 2, 2, 1, 2, 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BN_EPS = 1e-3


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow SAME padding: output ⌈in/s⌉, the extra pixel goes right/bottom."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv(x, w, stride=1, groups=1):
    return F.conv2d(_same_pad(x, w.shape[-1], stride), w, stride=stride, groups=groups)


def _bn(x, sd, prefix):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=BN_EPS,
    )


def block_strides(sd: dict[str, torch.Tensor]) -> list[int]:
    """Stride of each `_blocks.N`: a stage's first block takes the stage stride."""
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    strides, stage, prev = [], -1, None
    for i in range(n):
        out = sd[f"_blocks.{i}._project_conv.weight"].shape[0]
        if out != prev:
            stage, prev = stage + 1, out
            strides.append(STAGE_STRIDES[stage])
        else:
            strides.append(1)
    return strides


def forward(sd: dict[str, torch.Tensor], x: torch.Tensor, taps=()) -> tuple[torch.Tensor, dict]:
    """Logits `[B, 1000]`, and the outputs of the blocks listed in `taps` (flat indices)."""
    act = F.relu6
    x = act(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    tapped = {}
    for i, s in enumerate(block_strides(sd)):
        p = f"_blocks.{i}"
        inp = x
        if f"{p}._expand_conv.weight" in sd:
            x = act(_bn(_conv(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        w = sd[f"{p}._depthwise_conv.weight"]
        x = act(_bn(_conv(x, w, s, groups=w.shape[0]), sd, f"{p}._bn1"))
        x = _bn(_conv(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        if s == 1 and inp.shape == x.shape:
            x = x + inp
        if i in taps:
            tapped[i] = x
    x = act(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    x = x.mean(dim=(2, 3))
    return x @ sd["_fc.weight"].T + sd["_fc.bias"], tapped
