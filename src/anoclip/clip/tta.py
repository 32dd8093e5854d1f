"""Test-time adaptation of a light adapter on noise-corrupted tokens (METHOD.md §2.5).

Adapters, for tokens x `[L, C]` and x̂ = n(x):

    "text":   g(x) = ½x + ½·tanh(W x̂ + b)·T_s      W `[2S, C]`, T_s the sentence bank
    "linear": g(x) = ½x + ½·(W x̂ + b)               W `[C, C]`

Loss per image, with p = softmax(n(g(X))·F/τ) and X = [t ; t + ε]:

    L = mean_i H(p_i^clean) + ½·mean_i [−log p_i^noisy[a] − log p_i^clean[n]]

Each image (or image tile and layer, an "entry") has its own adapter, reset to
nn.Linear's default initialisation, trained for `steps` AdamW steps. All entries of a
batch are trained together with batched weights `[E, O, C]`: the summed loss has
per-entry gradients and AdamW is element-wise, so this equals E independent runs.

The randomness (initial weights, noise) comes from a generator seeded per batch and is
shared by all entries, so an image's result does not depend on the batch it is in.

Precision: the optimisation runs in `dtype` (float32 by default). The random draws are
always made in float32 and then cast, so a float64 run adapts the same problem. With
random backbone weights the gradients are about 1e-8, the size of Adam's ε, and float32
rounding (which depends on the CPU's kernels) visibly moves the result; float64 makes the
algorithm itself testable to ~1e-12 (tests/integration/test_tta_float64.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from anoclip.clip.scoring import anomaly_logits, l2_normalize
from anoclip.settings import Settings

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass
class AdamState:
    """AdamW moments and step count, carried between images in reference-quirk mode."""

    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    step: int = 0


@dataclass
class TTAOverrides:
    """Testing hook: fixed initial weights and noise instead of drawing them.

    weight `[E, O, C]`, bias `[E, O]`, noise `[E, steps, K, L, C]` or `[steps, K, L, C]`
    (already scaled by σ; K noisy copies per step, 1 for Gaussian noise).
    """

    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    noise: torch.Tensor | None = None


def adapter_out_dim(kind: str, sentence_bank: torch.Tensor) -> int:
    return sentence_bank.shape[0] if kind == "text" else sentence_bank.shape[1]


def init_adapter(
    out_dim: int, in_dim: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default init: W, b ~ U(−1/√in, 1/√in) (kaiming_uniform with a=√5)."""
    bound = 1.0 / math.sqrt(in_dim)
    weight = (torch.rand(out_dim, in_dim, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(out_dim, generator=generator) * 2 - 1) * bound
    return weight, bias


def apply_adapter(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    kind: str,
    sentence_bank: torch.Tensor | None = None,
) -> torch.Tensor:
    """g(x) for tokens `[E, N, C]` with per-entry weights `[E, O, C]`, bias `[E, O]`."""
    affinity = torch.baddbmm(bias.unsqueeze(1), l2_normalize(x), weight.transpose(1, 2))
    if kind == "text":
        affinity = torch.tanh(affinity) @ sentence_bank
    return 0.5 * x + 0.5 * affinity


def tta_loss(probs: torch.Tensor) -> torch.Tensor:
    """Per-entry loss `[E]` from probabilities `[E, 1+K, L, 2]`: index 0 clean, 1.. noisy.

    Written with the reference's operations and graph: with random weights the gradients
    are about 1e-8, the size of Adam's ε, so float32 rounding differences (even the order
    in which autograd accumulates them) visibly move the adapted map.
    """
    tiny = torch.finfo(probs.dtype).tiny  # keeps log finite for very small τ

    def log(p: torch.Tensor) -> torch.Tensor:
        return p.clamp_min(tiny).log()

    entropy = (-probs[:, 0] * log(probs[:, 0])).sum(-1).mean(-1)
    target = torch.zeros_like(probs[:, 1:])
    target[..., 1] = 1  # noisy -> abnormal; the clean term below -> normal
    cross = -target * log(probs[:, 1:]) - (1 - target) * log(probs[:, 0:1])
    return entropy + 0.5 * cross.sum(-1).mean(dim=(-2, -1))


def synth_loss(
    probs_clean: torch.Tensor, probs_syn: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-entry loss `[E]` of synthesized-anomaly TTA (METHOD.md §3.5):
    mean H(p_clean) + ½·mean CE(p_syn, y), y `[E, L]` = 1 on synthetic-defect tokens."""
    tiny = torch.finfo(probs_clean.dtype).tiny
    log_clean = probs_clean.clamp_min(tiny).log()
    log_syn = probs_syn.clamp_min(tiny).log()
    entropy = (-probs_clean * log_clean).sum(-1).mean(-1)
    cross = -(labels * log_syn[..., 1] + (1 - labels) * log_syn[..., 0]).mean(-1)
    return entropy + 0.5 * cross


def adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    state: AdamState,
    lr: float,
    weight_decay: float,
) -> None:
    """One AdamW update in place (torch.optim.AdamW's arithmetic, defaults β, ε)."""
    state.step += 1
    beta1, beta2 = ADAM_BETAS
    bias1 = 1 - beta1**state.step
    bias2_sqrt = math.sqrt(1 - beta2**state.step)
    for p, g, m, v in zip(params, grads, state.exp_avg, state.exp_avg_sq):
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.addcdiv_(m, (v.sqrt() / bias2_sqrt).add_(ADAM_EPS), value=-lr / bias1)


def draw_noise(
    shape: tuple[int, int], steps: int, settings: Settings, generator: torch.Generator
) -> torch.Tensor:
    """Noise for every step: `[steps, K, L, C]` with K noisy copies per step.

    "gaussian": K = 1, ε ~ N(0, σ²). "masked": K = 4, σ·1.1, each copy noising one of 4
    disjoint random blocks of ⌊L/4⌋ tokens (the reference's unused `mask_aug`).
    """
    length, dim = shape
    if settings.noise_mode == "gaussian":
        eps = torch.randn(steps, 1, length, dim, generator=generator)
        return eps * settings.tta_noise_sigma
    eps = torch.randn(steps, 1, length, dim, generator=generator) * settings.tta_noise_sigma * 1.1
    block = length // 4
    masks = torch.zeros(steps, 4, length, 1)
    for s in range(steps):
        order = torch.randperm(length, generator=generator)
        for k in range(4):
            masks[s, k, order[k * block : (k + 1) * block]] = 1.0
    return eps * masks


def adapt_tokens(
    tokens: torch.Tensor,
    text_features: torch.Tensor,
    sentence_bank: torch.Tensor,
    settings: Settings,
    generator: torch.Generator,
    overrides: TTAOverrides | None = None,
    carry: AdamState | None = None,
    synth: tuple[torch.Tensor, torch.Tensor] | None = None,
    use_noise: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Adapt tokens `[E, L, C]` and return g(t) `[E, L, C]` (detached, in `dtype`).

    `use_noise`: the AnoCLIP noise-corrupted copies (§2.5). `synth`: tokens `[E, L, C]` of a
    synthesized-anomaly image and their labels `[E, L]` (§3.5); with both, the losses add.
    `carry` (reference-quirk mode, reset_optimizer_state=False): AdamW moments that
    persist across calls; entries are then processed one after another.
    `dtype`: the precision of the whole optimisation (inputs, weights, noise, Adam moments);
    initial weights and noise are drawn in float32 and cast, whatever `dtype`.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"TTA dtype must be a floating-point dtype, not {dtype}")
    if not use_noise and synth is None:
        raise ValueError("TTA needs noise, synthesized anomalies, or both")
    entries, length, dim = tokens.shape
    if settings.tta_steps == 0:
        return tokens.detach().clone()
    kind = settings.adapter
    out_dim = adapter_out_dim(kind, sentence_bank)
    over = overrides or TTAOverrides()
    with torch.inference_mode(False), torch.enable_grad():
        t = tokens.detach().to(dtype).clone()
        feats = text_features.detach().to(dtype).clone()
        bank = sentence_bank.detach().to(dtype).clone()
        w0, b0 = init_adapter(out_dim, dim, generator)
        w0 = _per_entry(over.weight, w0.to(dtype), entries).to(t.device)
        b0 = _per_entry(over.bias, b0.to(dtype), entries).to(t.device)
        eps = None
        if use_noise:
            eps = over.noise
            if eps is None:
                eps = draw_noise((length, dim), settings.tta_steps, settings, generator)
            eps = _entry_noise(eps.to(dtype), entries).to(t.device)
        syn = None
        if synth is not None:
            syn = (synth[0].detach().to(dtype).clone(), synth[1].detach().to(dtype).clone())
        if carry is None:
            return _train(t, w0, b0, eps, syn, feats, bank, settings, None)
        outs = []
        for i in range(entries):
            one = slice(i, i + 1)
            outs.append(
                _train(
                    t[one],
                    w0[one],
                    b0[one],
                    None if eps is None else eps[one],
                    None if syn is None else (syn[0][one], syn[1][one]),
                    feats,
                    bank,
                    settings,
                    carry,
                )  # fmt: skip
            )
        return torch.cat(outs)


def _train(t, w0, b0, noise, syn, feats, bank, settings: Settings, carry: AdamState | None):
    """AdamW steps for entries `[E, L, C]`; noise `[E, steps, K, L, C]` or None;
    syn (tokens `[E, L, C]`, labels `[E, L]`) or None."""
    weight = w0.clone().requires_grad_(True)
    bias = b0.clone().requires_grad_(True)
    params = [weight, bias]
    if carry is None:
        state = AdamState(
            [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
        )
    else:
        if not carry.exp_avg:
            carry.exp_avg = [torch.zeros_like(p) for p in params]
            carry.exp_avg_sq = [torch.zeros_like(p) for p in params]
        carry.exp_avg = [m.to(p) for m, p in zip(carry.exp_avg, params)]  # dtype, device
        carry.exp_avg_sq = [v.to(p) for v, p in zip(carry.exp_avg_sq, params)]
        state = carry
    kind, tau = settings.adapter, settings.temperature
    entries, length, dim = t.shape
    for step in range(settings.tta_steps):
        parts = [t.unsqueeze(1)]
        if noise is not None:
            parts.append(t.unsqueeze(1) + noise[:, step])  # [E, K, L, C]
        if syn is not None:
            parts.append(syn[0].unsqueeze(1))
        x = torch.cat(parts, dim=1)  # [E, 1 (+K) (+1), L, C]
        g = apply_adapter(x.reshape(entries, -1, dim), weight, bias, kind, bank)
        probs = anomaly_logits(g, feats, tau).softmax(-1).view(entries, -1, length, 2)
        if syn is None:
            loss = tta_loss(probs).sum()
        else:
            loss = synth_loss(probs[:, 0], probs[:, -1], syn[1]).sum()
            if noise is not None:
                loss = loss + (tta_loss(probs[:, :-1]) - _entropy(probs[:, 0])).sum()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            adamw_step(params, list(grads), state, settings.tta_lr, settings.tta_weight_decay)
    with torch.no_grad():
        return apply_adapter(t, weight, bias, kind, bank)


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy per entry `[E]` of probabilities `[E, L, 2]`."""
    logp = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return (-probs * logp).sum(-1).mean(-1)


def _per_entry(given: torch.Tensor | None, drawn: torch.Tensor, entries: int) -> torch.Tensor:
    """Per-entry parameters `[E, *drawn.shape]` in drawn's dtype: the override as given,
    else `drawn` copied."""
    if given is None:
        return drawn.unsqueeze(0).expand(entries, *drawn.shape).clone()
    if tuple(given.shape) != (entries, *drawn.shape):
        raise ValueError(
            f"TTA override of shape {tuple(given.shape)}, expected {(entries, *drawn.shape)}"
        )
    return given.to(drawn.dtype)


def _entry_noise(noise: torch.Tensor, entries: int) -> torch.Tensor:
    """`[steps, K, L, C]` (shared) or `[E, steps, K, L, C]` -> `[E, steps, K, L, C]`."""
    if noise.dim() == 4:
        return noise.unsqueeze(0).expand(entries, *noise.shape)
    if noise.dim() == 5 and noise.shape[0] == entries:
        return noise
    raise ValueError(f"TTA noise of shape {tuple(noise.shape)} does not fit {entries} entries")
