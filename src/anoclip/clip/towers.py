"""The one module that touches open_clip's internals.

anoclip reads these attributes of an open_clip CLIP model, and nothing else of its
internals (the public `encode_text`, `visual(x)` forward and tokenizer aside):

    visual: conv1, class_embedding, positional_embedding, ln_pre, transformer.resblocks,
            ln_post, proj, grid_size, image_size (attn_pool None, pool_type "tok")
    block:  ln_1, ln_2, mlp, ls_1, ls_2,
            attn.in_proj_weight `[3D, D]`, attn.in_proj_bias `[3D]`,
            attn.out_proj.weight `[D, D]`, attn.out_proj.bias `[D]`, attn.num_heads
    text:   token_embedding, positional_embedding, transformer, attn_mask, ln_final,
            text_projection, text_pool_type (only for the exact "trimmed" text encoding)

:func:`unsupported_reason` checks exactly these, duck-typed: any attention class that
carries the same parameter names works, whatever its type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from open_clip.transformer import text_global_pool
from torch import nn

VISUAL_ATTRS = (
    "conv1",
    "class_embedding",
    "positional_embedding",
    "ln_pre",
    "transformer",
    "ln_post",
    "proj",
    "grid_size",
    "image_size",
)
BLOCK_ATTRS = ("ln_1", "ln_2", "mlp", "ls_1", "ls_2", "attn")
ATTENTION_ATTRS = ("in_proj_weight", "in_proj_bias", "out_proj", "num_heads")


@dataclass(frozen=True)
class BlockParts:
    """One transformer block as the V-V encoder uses it.

    qkv_weight `[3D, D]`, qkv_bias `[3D]` (rows: Q, K, V), out_weight `[D, D]`, out_bias
    `[D]`; ln_1, ln_2, mlp, ls_1, ls_2 the block's own modules.
    """

    ln_1: nn.Module
    ln_2: nn.Module
    mlp: nn.Module
    ls_1: nn.Module
    ls_2: nn.Module
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    heads: int


def unsupported_reason(model: Any) -> str | None:
    """Why `model` cannot be used by the V-V encoder, or None when it can."""
    visual = getattr(model, "visual", None)
    if visual is None:
        return "it has no vision tower"
    missing = [a for a in VISUAL_ATTRS if not hasattr(visual, a)]
    if missing or not hasattr(visual.transformer, "resblocks"):
        return f"its vision tower is not a ViT (missing {', '.join(missing) or 'resblocks'})"
    if getattr(visual, "attn_pool", None) is not None:
        return "its vision tower pools with attention, not with the CLS token"
    if getattr(visual, "pool_type", "tok") != "tok":
        return f"its vision tower pools by {visual.pool_type!r}, not by the CLS token"
    for index, block in enumerate(visual.transformer.resblocks, start=1):
        gone = [a for a in BLOCK_ATTRS if not hasattr(block, a)]
        gone += [f"attn.{a}" for a in ATTENTION_ATTRS if not hasattr(block.attn, a)]
        if gone:
            return f"block {index} lacks {', '.join(gone)}"
        if block.attn.in_proj_weight is None or block.attn.in_proj_bias is None:
            return f"block {index} has no packed QKV projection"
    return None


def blocks(visual: nn.Module) -> list[nn.Module]:
    return list(visual.transformer.resblocks)


def depth(visual: nn.Module) -> int:
    return len(visual.transformer.resblocks)


def grid_size(visual: nn.Module) -> tuple[int, int]:
    return tuple(int(g) for g in visual.grid_size)


def image_size(visual: nn.Module) -> int:
    size = visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def block_parts(block: nn.Module) -> BlockParts:
    attn = block.attn
    return BlockParts(
        ln_1=block.ln_1,
        ln_2=block.ln_2,
        mlp=block.mlp,
        ls_1=block.ls_1,
        ls_2=block.ls_2,
        qkv_weight=attn.in_proj_weight,
        qkv_bias=attn.in_proj_bias,
        out_weight=attn.out_proj.weight,
        out_bias=attn.out_proj.bias,
        heads=int(attn.num_heads),
    )


def embed(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """h_0 = LN_pre(patch_embed(x) ⊕ cls + pos): `[B, 3, S, S]` -> `[B, 1+L, D]`."""
    x = visual.conv1(x)
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def project(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LN_post then projection P: `[..., D] -> [..., C]`."""
    x = visual.ln_post(x)
    return x @ visual.proj if visual.proj is not None else x


def can_trim_text(model: nn.Module) -> bool:
    """Whether the end-of-text embedding is independent of the padding (causal mask and
    argmax/eos pooling), so encoding only the used token positions is exact."""
    return (
        all(
            hasattr(model, a)
            for a in ("token_embedding", "positional_embedding", "ln_final", "transformer")
        )
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def encode_text_trimmed(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `encode_text` over the used token positions only: `[N, 77]` -> `[N, C]`.

    Requires :func:`can_trim_text`; exact up to float rounding.
    """
    used = int((tokens != 0).nonzero()[:, 1].max().item()) + 1 if tokens.any() else 1
    tokens = tokens[:, :used]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:used].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:used, :used])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj
