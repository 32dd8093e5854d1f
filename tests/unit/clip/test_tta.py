"""Test-time adaptation: optimizer, loss, vectorisation, seeding and resets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anoclip import Detector, Settings
from anoclip.clip.tta import AdamState, adamw_step, adapt_tokens, draw_noise, init_adapter, tta_loss


def test_adamw_step_matches_torch_adamw():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(7, 5, generator=g)
    ours, theirs = p0.clone(), p0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([theirs], lr=1e-2, weight_decay=0.01)
    state = AdamState([torch.zeros_like(p0)], [torch.zeros_like(p0)])
    for _ in range(6):
        grad = torch.randn(7, 5, generator=g)
        adamw_step([ours], [grad], state, 1e-2, 0.01)
        theirs.grad = grad.clone()
        opt.step()
    assert torch.allclose(ours, theirs.detach(), atol=1e-6)


def test_loss_matches_formula_float64():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 2, 10, 2, generator=g)
    probs = logits.softmax(-1)
    got = tta_loss(probs)
    p = probs.double()
    entropy = -(p[:, 0] * p[:, 0].log()).sum(-1).mean(-1)
    ce = (-p[:, 1, :, 1].log()).mean(-1) + (-p[:, 0, :, 0].log()).mean(-1)
    assert torch.allclose(got.double(), entropy + 0.5 * ce, atol=1e-6)


def _independent_tta(t, feats, bank, w0, b0, noise, kind, lr=1e-3, steps=5, tau=1.0):
    """One entry with nn.Linear + torch.optim.AdamW, written from METHOD.md §2.5."""
    lin = torch.nn.Linear(w0.shape[1], w0.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(w0)
        lin.bias.copy_(b0)
    opt = torch.optim.AdamW(lin.parameters(), lr=lr)

    def g(x):
        a = lin(x / x.norm(dim=-1, keepdim=True))
        a = torch.tanh(a) @ bank if kind == "text" else a
        return 0.5 * x + 0.5 * a

    def probs(x):
        y = g(x)
        return torch.softmax((y / y.norm(dim=-1, keepdim=True)) @ feats / tau, -1)

    for s in range(steps):
        pc, pn = probs(t), probs(t + noise[s])
        loss = -(pc * pc.log()).sum(-1).mean() + 0.5 * (
            (-pn[:, 1].log()).mean() + (-pc[:, 0].log()).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return g(t)


@pytest.mark.parametrize("kind", ["text", "linear"])
def test_vectorised_tta_equals_independent_runs(kind):
    gen = torch.Generator().manual_seed(2)
    e, length, dim = 3, 12, 8
    tokens = torch.randn(e, length, dim, generator=gen) * 4
    feats = torch.nn.functional.normalize(torch.randn(dim, 2, generator=gen), dim=0)
    bank = torch.nn.functional.normalize(torch.randn(10, dim, generator=gen), dim=1)
    out_dim = 10 if kind == "text" else dim
    w0 = torch.randn(e, out_dim, dim, generator=gen) * 0.3
    b0 = torch.randn(e, out_dim, generator=gen) * 0.3
    noise = torch.randn(e, 5, 1, length, dim, generator=gen) * 0.5
    from anoclip.clip.tta import TTAOverrides

    settings = Settings(adapter=kind, temperature=0.07, tta_lr=1e-2)
    got = adapt_tokens(tokens, feats, bank, settings, gen, TTAOverrides(w0, b0, noise))
    for i in range(e):
        want = _independent_tta(
            tokens[i].double(),
            feats.double(),
            bank.double(),
            w0[i].double(),
            b0[i].double(),
            noise[i, :, 0].double(),
            kind,
            lr=1e-2,
            tau=0.07,
        )
        assert torch.allclose(got[i].double(), want, atol=1e-4), (i, (got[i] - want).abs().max())


@pytest.mark.parametrize("kind", ["text", "linear"])
def test_float64_tta_is_exact_with_the_same_draws(kind):
    """dtype=float64: the same seeded draws (made in float32, then cast), and the result of
    an independent float64 nn.Linear + torch.optim.AdamW run to ~1e-12."""
    gen = torch.Generator().manual_seed(4)
    e, length, dim = 2, 12, 8
    tokens = torch.randn(e, length, dim, generator=gen) * 4
    feats = torch.nn.functional.normalize(torch.randn(dim, 2, generator=gen), dim=0)
    bank = torch.nn.functional.normalize(torch.randn(10, dim, generator=gen), dim=1)
    settings = Settings(adapter=kind, temperature=0.07, tta_lr=1e-2)
    got = adapt_tokens(
        tokens, feats, bank, settings, torch.Generator().manual_seed(3), dtype=torch.float64
    )
    f32 = adapt_tokens(tokens, feats, bank, settings, torch.Generator().manual_seed(3))
    assert got.dtype == torch.float64 and f32.dtype == torch.float32
    draws = torch.Generator().manual_seed(3)
    w0, b0 = init_adapter(10 if kind == "text" else dim, dim, draws)
    noise = draw_noise((length, dim), settings.tta_steps, settings, draws)
    for i in range(e):
        want = _independent_tta(
            tokens[i].double(), feats.double(), bank.double(), w0.double(), b0.double(),
            noise[:, 0].double(), kind, lr=1e-2, tau=0.07,
        )  # fmt: skip
        assert torch.allclose(got[i], want, rtol=0, atol=1e-10), (got[i] - want).abs().max()
        assert torch.allclose(f32[i].double(), want, atol=1e-4)


def test_tta_dtype_must_be_floating():
    t = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="floating-point"):
        adapt_tokens(t, torch.zeros(3, 2), torch.zeros(2, 3), Settings(), None, dtype=torch.int64)


def test_masked_noise_blocks():
    s = Settings(noise_mode="masked")
    noise = draw_noise((225, 4), 5, s, torch.Generator().manual_seed(0))
    assert noise.shape == (5, 4, 225, 4)
    active = noise.abs().sum(-1) > 0  # [steps, 4, L]
    assert (active.sum(-1) == 56).all()  # ⌊225/4⌋ tokens per block
    assert (active.sum(1) <= 1).all()  # disjoint blocks
    assert abs(noise[noise != 0].std().item() - 0.0605) < 0.005


@pytest.fixture(scope="module")
def screw_images(mvtec):
    import glob

    return sorted(glob.glob(str(mvtec / "screw/test/scratch_head/*.png")))[:3]


def test_tta_changes_map_and_is_reproducible(tiny_backbone, screw_images):
    det = Detector(backbone=tiny_backbone, image_score="cls")
    plain = det.predict(screw_images[:2], "screw", tta=False)
    a = det.predict(screw_images[:2], "screw", tta=True)
    b = Detector(backbone=tiny_backbone, image_score="cls").predict(screw_images[:2], "screw")
    other = Detector(backbone=tiny_backbone, image_score="cls", seed=1).predict(
        screw_images[:2], "screw"
    )
    for p, x, y, o in zip(plain, a, b, other):
        assert np.abs(p.anomaly_map - x.anomaly_map).max() > 1e-5  # TTA moves the map
        assert np.array_equal(x.anomaly_map, y.anomaly_map)  # same seed, same result
        assert np.abs(x.anomaly_map - o.anomaly_map).max() > 0  # seed matters
        assert x.score == p.score  # TTA never touches the image score


def test_each_image_gets_a_fresh_adapter(tiny_backbone, screw_images):
    det = Detector(backbone=tiny_backbone, image_score="cls", batch_size=3)
    together = det.predict(screw_images, "screw")
    alone = [det.predict(p, "screw")[0] for p in reversed(screw_images)][::-1]
    for x, y in zip(together, alone):
        assert np.array_equal(x.anomaly_map, y.anomaly_map)


def test_reference_quirk_leaks_optimizer_state(tiny_backbone, screw_images):
    """reset_optimizer_state=False: Adam moments carry over, so order changes results."""
    quirk = dict(image_score="cls", reset_optimizer_state=False, tta_lr=1e-2)
    first = Detector(backbone=tiny_backbone, **quirk).predict(screw_images[1], "screw")[0]
    det = Detector(backbone=tiny_backbone, **quirk)
    det.predict(screw_images[0], "screw")
    second = det.predict(screw_images[1], "screw")[0]
    assert np.abs(first.anomaly_map - second.anomaly_map).max() > 0
    fresh = Detector(backbone=tiny_backbone, image_score="cls", tta_lr=1e-2)
    assert np.array_equal(fresh.predict(screw_images[1], "screw")[0].anomaly_map, first.anomaly_map)
