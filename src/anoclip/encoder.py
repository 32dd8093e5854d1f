"""The V-V dual-path visual encoder (METHOD.md §2.1-2.2), wrapped around open_clip's ViT.

For every block l the tower's own `in_proj`/`out_proj` weights give two attentions of the
same input u_l = LN1_l(h_{l-1}):

    o_ori_l = heads(softmax(Q Kᵀ/√d_h) V) W_o + b_o      (original path, h)
    o_vv_l  = heads(softmax(V Vᵀ/√d_h) V) W_o + b_o      (V-V path, z; no MLP)

    h_l = h_{l-1} + o_ori_l + MLP_l(LN2_l(h_{l-1} + o_ori_l))
    z_l = z_{l-1} + o_vv_l,   z_{s-1} = h_{s-1} (s = vv_start_layer)

Tokens are LN_post(·)·P of the snapshot of each requested layer. Snapshots are fresh
tensors (no in-place updates), so per-layer tokens are real per-layer values (the
reference's aliasing bug, pitfall P1, cannot happen).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn


@dataclass
class EncoderOutput:
    """Encoder outputs for a batch of B images with an h×w patch grid (L = h·w).

    cls: `[B, C]` original-path CLS after LN_post and projection (the image embedding).
    vv: layer (1-based) -> `[B, L, C]` V-V patch tokens after LN_post and projection.
    ori: layer -> `[B, L, C]` original-path patch tokens after LN_post and projection.
    grid: (h, w) patch grid.
    """

    cls: torch.Tensor
    vv: dict[int, torch.Tensor]
    grid: tuple[int, int]
    ori: dict[int, torch.Tensor] = field(default_factory=dict)


class VVEncoder(nn.Module):
    """V-V dual-path encoder over an open_clip :class:`VisionTransformer` (weights shared)."""

    def __init__(self, visual: VisionTransformer, vv_start_layer: int = 1) -> None:
        super().__init__()
        self.visual = visual
        self.depth = len(visual.transformer.resblocks)
        if not 1 <= vv_start_layer <= self.depth:
            raise ValueError(f"vv_start_layer must be in [1, {self.depth}]")
        self.vv_start_layer = vv_start_layer

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    def forward(
        self,
        images: torch.Tensor,
        layers: Sequence[int] = (),
        ori_layers: Sequence[int] = (),
    ) -> EncoderOutput:
        """Encode `images` `[B, 3, H, W]` (normalised, at the tower's input size).

        `layers`: 1-based layers whose V-V tokens are returned (default: the last one).
        `ori_layers`: 1-based layers whose original-path patch tokens are returned.
        """
        layers = tuple(layers) or (self.depth,)
        for layer in (*layers, *ori_layers):
            if not 1 <= layer <= self.depth:
                raise ValueError(f"layer {layer} outside [1, {self.depth}]")
        if min(layers) < self.vv_start_layer:
            raise ValueError(
                f"V-V layers {layers} start before vv_start_layer={self.vv_start_layer}"
            )
        h = self._embed(images)
        z = None
        vv_snap: dict[int, torch.Tensor] = {}
        ori_snap: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.visual.transformer.resblocks, start=1):
            with_vv = index >= self.vv_start_layer and index <= max(layers)
            h_next, o_vv = _dual_block(block, h, with_vv)
            if with_vv:
                z = (h if z is None else z) + o_vv
                if index in layers:
                    vv_snap[index] = z[:, 1:]
            h = h_next
            if index in ori_layers:
                ori_snap[index] = h[:, 1:]
        cls = self._project(h[:, 0])
        vv = {layer: self._project(t) for layer, t in vv_snap.items()}
        ori = {layer: self._project(t) for layer, t in ori_snap.items()}
        return EncoderOutput(cls=cls, vv=vv, ori=ori, grid=self.grid)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """h_0 = LN_pre(patch_embed(x) ⊕ cls + pos): `[B, 1+L, D]`."""
        v = self.visual
        x = v.conv1(x)
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """LN_post then projection P: `[..., D] -> [..., C]`."""
        x = self.visual.ln_post(x)
        return x @ self.visual.proj if self.visual.proj is not None else x


def _dual_block(
    block: ResidualAttentionBlock, h: torch.Tensor, with_vv: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One block of both paths from the original stream `h` `[B, N, D]`.

    Returns h_l and o_vv_l (None when `with_vv` is False). The attention is written out
    (no fused kernels) in the reference's operation order, so that float32 results are
    bit-identical to it; see :func:`_reference_softmax`.
    """
    attn: nn.MultiheadAttention = block.attn
    b, n, d = h.shape
    heads = attn.num_heads
    scale = (d // heads) ** -0.5
    u = block.ln_1(h)
    qkv = F.linear(u, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # [B, heads, N, d_h]
    weights = _reference_softmax((q @ k.transpose(-2, -1)) * scale).to(v.dtype)
    o_ori = _merge_heads(weights @ v, attn)
    h_mid = h + block.ls_1(o_ori)
    h_next = h_mid + block.ls_2(block.mlp(block.ln_2(h_mid)))
    if not with_vv:
        return h_next, None
    weights = ((v @ v.transpose(-2, -1)) * scale).float().softmax(dim=-1).to(v.dtype)
    return h_next, block.ls_1(_merge_heads(weights @ v, attn))


def _merge_heads(x: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
    """`[B, heads, N, d_h]` -> output projection `[B, N, D]`."""
    b, heads, n, dh = x.shape
    x = x.transpose(1, 2).reshape(b, n, heads * dh)
    return F.linear(x, attn.out_proj.weight, attn.out_proj.bias)


def _reference_softmax(logits: torch.Tensor) -> torch.Tensor:
    """softmax as the reference computes it, exp(x) / Σ exp(x), in float32.

    Rows whose maximum could overflow exp (> 60) are shifted by their maximum first; for
    all other rows the shift is exactly 0, so the result is bit-identical to the reference.
    """
    x = logits.float()
    peak = x.amax(dim=-1, keepdim=True)
    x = x - torch.where(peak > 60.0, peak, torch.zeros_like(peak))
    e = x.exp()
    return e / e.sum(dim=-1, keepdim=True)
