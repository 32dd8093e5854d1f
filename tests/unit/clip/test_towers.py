"""The one place that reads open_clip internals: a duck-typed support check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from anoclip.clip import towers
from anoclip.clip.encoder import VVEncoder


class FutureAttention(nn.Module):
    """Not an nn.MultiheadAttention, but with the same parameter names (as a newer
    open_clip attention class might be): packed QKV, out_proj, num_heads."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.num_heads = mha.num_heads
        self.in_proj_weight = nn.Parameter(mha.in_proj_weight.detach().clone())
        self.in_proj_bias = nn.Parameter(mha.in_proj_bias.detach().clone())
        self.out_proj = nn.Linear(*reversed(mha.out_proj.weight.shape))
        self.out_proj.load_state_dict(mha.out_proj.state_dict())


def test_open_clip_vit_is_supported(tiny_backbone):
    assert towers.unsupported_reason(tiny_backbone.model) is None


def test_other_attention_class_with_same_parameter_names_passes(tiny_backbone):
    model = copy.deepcopy(tiny_backbone.model)
    for block in model.visual.transformer.resblocks:
        block.attn = FutureAttention(block.attn)
    assert not isinstance(model.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)
    assert towers.unsupported_reason(model) is None
    x = torch.randn(2, 3, 240, 240, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = VVEncoder(model.visual)(x, (6, 12))
        base = VVEncoder(tiny_backbone.model.visual)(x, (6, 12))
    assert torch.equal(ours.vv[12], base.vv[12]) and torch.equal(ours.cls, base.cls)


@pytest.mark.parametrize(
    "break_it,words",
    [
        (lambda m: delattr(m.visual.transformer.resblocks[3].attn, "in_proj_weight"), "block 4"),
        (lambda m: setattr(m.visual, "attn_pool", nn.Identity()), "attention"),
        (lambda m: setattr(m.visual, "pool_type", "avg"), "'avg'"),
        (lambda m: delattr(m.visual, "ln_post"), "ln_post"),
    ],
)
def test_missing_attributes_are_named(tiny_backbone, break_it, words):
    model = copy.deepcopy(tiny_backbone.model)
    break_it(model)
    reason = towers.unsupported_reason(model)
    assert reason is not None and words in reason


def test_trimmed_text_is_offered_only_where_exact(tiny_backbone):
    assert towers.can_trim_text(tiny_backbone.model)
    model = copy.deepcopy(tiny_backbone.model)
    model.attn_mask = None  # no causal mask: the padding would matter
    assert not towers.can_trim_text(model)
