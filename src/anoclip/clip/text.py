"""Text embeddings of the state prompts: F = [f_n, f_a] and the per-sentence bank T_s.

Encoding 924 sentences is the most expensive step for a new object (about 80 s on two CPU
cores for ViT-B-16-plus-240), so :class:`TextCache` keeps results per (backbone, object,
prompt settings).

`text_tokens="full"` (default) encodes each state's 462 sentences as one batch over the
full 77-token context, as the official code does, which reproduces its float32 values bit
for bit. `"trimmed"` encodes only the used token positions: with CLIP's causal mask the
end-of-text embedding does not depend on the padding, so this is exact up to float
rounding and about 4x faster.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from anoclip.clip import towers
from anoclip.clip.backbone import Backbone
from anoclip.clip.prompts import sentences
from anoclip.errors import AnoclipWarning
from anoclip.settings import TextEnsemble as Ensemble
from anoclip.settings import TextTokens

_MAX_BATCH = 1024


@dataclass(frozen=True)
class TextBank:
    """Prompt-ensemble text embeddings of one object.

    features: `[C, 2]` L2-normalised ensemble embeddings, column 0 normal, 1 abnormal.
    sentences: `[2·S, C]` per-sentence L2-normalised embeddings, the S normal rows first
        (S = 462), the basis of the text adapter.
    """

    name: str
    texture: bool
    features: torch.Tensor
    sentences: torch.Tensor


def encode_text(backbone: Backbone, texts: list[str], trimmed: bool = False) -> torch.Tensor:
    """Unnormalised text embeddings `[N, C]` of `texts` (inference mode, model device)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), _MAX_BATCH):
            tokens = backbone.tokenizer(texts[start : start + _MAX_BATCH]).to(backbone.device)
            if trimmed:
                out.append(_encode_tokens(backbone.model, tokens).float())
            else:
                out.append(backbone.model.encode_text(tokens).float())
    return torch.cat(out)


def _encode_tokens(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's `encode_text`, run only over the used token positions when that is exact."""
    if towers.can_trim_text(model):
        return towers.encode_text_trimmed(model, tokens)
    return model.encode_text(tokens)


def build_text_bank(
    backbone: Backbone,
    name: str,
    texture: bool,
    ensemble: Ensemble = "anovl",
    text_tokens: TextTokens = "full",
) -> TextBank:
    """Encode the 2 × 462 sentences for `name` and ensemble them per state.

    "anovl": mean of the unnormalised embeddings, then L2-normalised (AnoVL).
    "normalized": normalise each, average, normalise again (APRIL-GAN).
    """
    trimmed = text_tokens == "trimmed"
    means, banks = [], []
    states = sentences(name, texture)
    warn_if_cut(backbone.tokenizer, name, states)
    for state in states:  # one batch per state, as the official code
        emb = encode_text(backbone, state, trimmed)
        normed = emb / emb.norm(dim=-1, keepdim=True)
        source = emb if ensemble == "anovl" else normed
        mean = source.mean(0)
        means.append(mean / mean.norm())
        banks.append(normed)
    return TextBank(
        name=name,
        texture=texture,
        features=torch.stack(means, dim=1),
        sentences=torch.cat(banks),
    )


def cut_prompts(tokenizer: Callable[..., torch.Tensor], texts: list[str]) -> tuple[int, int]:
    """(prompts that fill the whole context, so were possibly cut; prompts that became
    identical to another one). A row is full when its last token is not padding."""
    tokens = tokenizer(texts)
    full = int((tokens[:, -1] != 0).sum())
    identical = len(texts) - len({tuple(row.tolist()) for row in tokens})
    return full, identical


def warn_if_cut(
    tokenizer: Callable[..., torch.Tensor], name: str, states: tuple[list[str], list[str]]
) -> None:
    """One warning when the object name makes prompts longer than the text context."""
    counts = [cut_prompts(tokenizer, state) for state in states]
    full, identical = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if full:
        warnings.warn(
            f"object name {name!r} is too long for the text context: {full} of "
            f"{sum(len(s) for s in states)} prompts were cut, {identical} of them became "
            "identical; use a shorter name",
            AnoclipWarning,
            stacklevel=3,
        )


class TextCache:
    """In-memory cache of :class:`TextBank` per (backbone, name, domain, prompt settings)."""

    def __init__(self) -> None:
        self._banks: dict[tuple, TextBank] = {}

    def get(
        self,
        backbone: Backbone,
        name: str,
        texture: bool,
        ensemble: Ensemble = "anovl",
        text_tokens: TextTokens = "full",
    ) -> TextBank:
        key = (backbone.key, name, texture, ensemble, text_tokens)
        if key not in self._banks:
            self._banks[key] = build_text_bank(backbone, name, texture, ensemble, text_tokens)
        return self._banks[key]

    def __len__(self) -> int:
        return len(self._banks)
