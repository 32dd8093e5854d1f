"""The V-V dual-path visual encoder (METHOD.md §2.1-2.2), wrapped around open_clip's ViT.

For every block l the tower's own `in_proj`/`out_proj` weights give two attentions of the
same input u_l = LN1_l(h_{l-1}):

    o_ori_l = heads(softmax(Q Kᵀ/√d_h) V) W_o + b_o      (original path, h)
    o_vv_l  = heads(softmax(V Vᵀ/√d_h) V) W_o + b_o      (V-V path, z; no MLP)

    h_l = h_{l-1} + o_ori_l + MLP_l(LN2_l(h_{l-1} + o_ori_l))
    z_l = z_{l-1} + o_vv_l,   z_{s-1} = h_{s-1} (s = vv_start_layer)

Tokens are LN_post(·)·P of the snapshot of each requested layer. Snapshots are fresh
tensors (no in-place updates), so per-layer tokens are real per-layer values (the
official code's aliasing bug, pitfall P1, cannot happen). The tower's internals are read
through :mod:`anoclip.clip.towers` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from anoclip.clip import towers
from anoclip.clip.towers import BlockParts


@dataclass
class EncoderOutput:
    """Encoder outputs for a batch of B images with an h×w patch grid (L = h·w).

    cls: `[B, C]` original-path CLS after LN_post and projection (the image embedding).
    vv: layer (1-based) -> `[B, L, C]` V-V patch tokens after LN_post and projection.
    ori: layer -> `[B, L, C]` original-path patch tokens after LN_post and projection.
    residual: layer -> `[B, L, D]` the same tokens before LN_post and projection (the
        residual stream h_l, width D; what MuSc's patch features start from).
    grid: (h, w) patch grid.
    """

    cls: torch.Tensor
    vv: dict[int, torch.Tensor]
    grid: tuple[int, int]
    ori: dict[int, torch.Tensor] = field(default_factory=dict)
    residual: dict[int, torch.Tensor] = field(default_factory=dict)


class VVEncoder(nn.Module):
    """V-V dual-path encoder over an open_clip ViT vision tower (weights shared)."""

    def __init__(self, visual: nn.Module, vv_start_layer: int = 1) -> None:
        super().__init__()
        self.visual = visual
        self.depth = towers.depth(visual)
        if not 1 <= vv_start_layer <= self.depth:
            raise ValueError(f"vv_start_layer must be in [1, {self.depth}]")
        self.vv_start_layer = vv_start_layer

    @property
    def grid(self) -> tuple[int, int]:
        return towers.grid_size(self.visual)

    def forward(
        self,
        images: torch.Tensor,
        layers: Sequence[int] = (),
        ori_layers: Sequence[int] = (),
        with_vv: bool = True,
    ) -> EncoderOutput:
        """Encode `images` `[B, 3, H, W]` (normalised, at the tower's input size).

        `layers`: 1-based layers whose V-V tokens are returned (default: the last one).
        `ori_layers`: 1-based layers whose original-path patch tokens are returned.
        `with_vv=False`: the original path only (no V-V tokens computed; `layers` unused).
        """
        layers = (tuple(layers) or (self.depth,)) if with_vv else ()
        for layer in (*layers, *ori_layers):
            if not 1 <= layer <= self.depth:
                raise ValueError(f"layer {layer} outside [1, {self.depth}]")
        if layers and min(layers) < self.vv_start_layer:
            raise ValueError(
                f"V-V layers {layers} start before vv_start_layer={self.vv_start_layer}"
            )
        h = towers.embed(self.visual, images)
        z = None
        vv_snap: dict[int, torch.Tensor] = {}
        ori_snap: dict[int, torch.Tensor] = {}
        for index, block in enumerate(towers.blocks(self.visual), start=1):
            vv_here = self.vv_start_layer <= index <= max(layers, default=0)
            h_next, o_vv = _dual_block(towers.block_parts(block), h, vv_here)
            if vv_here:
                z = (h if z is None else z) + o_vv
                if index in layers:
                    vv_snap[index] = z[:, 1:]
            h = h_next
            if index in ori_layers:
                ori_snap[index] = h[:, 1:]
        cls = towers.project(self.visual, h[:, 0])
        vv = {layer: towers.project(self.visual, t) for layer, t in vv_snap.items()}
        ori = {layer: towers.project(self.visual, t) for layer, t in ori_snap.items()}
        return EncoderOutput(cls=cls, vv=vv, ori=ori, grid=self.grid, residual=ori_snap)


def _dual_block(
    block: BlockParts, h: torch.Tensor, with_vv: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One block of both paths from the original stream `h` `[B, N, D]`.

    Returns h_l and o_vv_l (None when `with_vv` is False). The attention is written out
    (no fused kernels) in the official code's operation order, so that float32 results are
    bit-identical to it; see :func:`anovl_softmax`.
    """
    b, n, d = h.shape
    heads = block.heads
    scale = (d // heads) ** -0.5
    u = block.ln_1(h)
    qkv = F.linear(u, block.qkv_weight, block.qkv_bias)
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # [B, heads, N, d_h]
    weights = anovl_softmax((q @ k.transpose(-2, -1)) * scale).to(v.dtype)
    o_ori = _merge_heads(weights @ v, block)
    h_mid = h + block.ls_1(o_ori)
    h_next = h_mid + block.ls_2(block.mlp(block.ln_2(h_mid)))
    if not with_vv:
        return h_next, None
    weights = ((v @ v.transpose(-2, -1)) * scale).float().softmax(dim=-1).to(v.dtype)
    return h_next, block.ls_1(_merge_heads(weights @ v, block))


def _merge_heads(x: torch.Tensor, block: BlockParts) -> torch.Tensor:
    """`[B, heads, N, d_h]` -> output projection `[B, N, D]`."""
    b, heads, n, dh = x.shape
    x = x.transpose(1, 2).reshape(b, n, heads * dh)
    return F.linear(x, block.out_weight, block.out_bias)


def anovl_softmax(logits: torch.Tensor) -> torch.Tensor:
    """softmax as the official code computes it, exp(x) / Σ exp(x), in float32.

    Rows whose maximum could overflow exp (> 60) are shifted by their maximum first; for
    all other rows the shift is exactly 0, so the result is bit-identical to AnoVL's.
    """
    x = logits.float()
    peak = x.amax(dim=-1, keepdim=True)
    x = x - torch.where(peak > 60.0, peak, torch.zeros_like(peak))
    e = x.exp()
    return e / e.sum(dim=-1, keepdim=True)
