"""Test oracles: straightforward re-writings of reference code that the pipeline must match.

:class:`AnoVLLoop` is what the official AnoVL code (``hq-deng/AnoVL``, ``vl_test.py`` at
``3a70bfd``; METHOD.md §2.6) does per image on MVTec, written as plainly as that script:

    once per object:  F `[C, 2]`, T_s `[2S, C]` <- the 2 × 462 prompt sentences, each
                      state one batch through ``model.encode_text`` (unnormalised mean,
                      then L2-normalised; T_s rows L2-normalised, normal rows first)
                      adapter <- nn.Linear(C, 2S) (AnoVL's ``TextAdapter.ad``)
                      optimizer <- torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    per image x `[1, 3, S, S]` (batch size 1, as its DataLoader):
        views `[22, 3, S, S]` <- the 22 augmented views (``utils.aug``)
        CLS `[22, C]` <- ONE batch of the 22 views through the dual-path encoder
                         (original and V-V attention in every block, as AnoVL's
                         ``encode_image(image_aug)``)
        s_img = mean_v softmax(n(CLS_v) · F)[a]                  (τ = 1)
        t `[L, C]` <- the identity view through the dual-path encoder again, alone
                      (``encode_image(image)``): layer-12 V-V tokens
        adapter reset; 5 × { X = [t ; t + ε_k], g(X) = ½X + ½·tanh(W n(X) + b)·T_s,
                             p = softmax(n(g(X))·F), loss = AnoVL's ``loss_func(p)``,
                             zero_grad, backward, optimizer.step() }
        M <- bilinear↑S(avgpool3(pad_rep(p_a(g(t)))))

What it mirrors exactly: the encoder work (22 + 1 dual-path passes, no plain-tower
shortcut, no batching across images), torch's own nn.Linear + autograd + AdamW for the
5 steps, the loss written as ``loss_func``, and the text encoded once per object.

Where it departs from ``vl_test.py``, so that its outputs can be compared with
:meth:`anoclip.Detector.predict` (METHOD.md §2.5):

* **Optimizer state.** The reference keeps one AdamW per object whose moments carry over
  from image to image; anoclip's default (``reset_optimizer_state=True``, what
  ``../golden`` pins down) is a fresh optimizer per image. The oracle keeps the
  reference's one optimizer per object and clears its state before each image
  (``optimizer.state.clear()``), which is exactly a fresh AdamW.
* **Random draws.** The reference calls ``reset_parameters()`` and ``torch.normal`` on the
  global RNG; the oracle copies anoclip's seeded draws of the same distributions
  (:func:`anoclip.clip.tta.init_adapter`, :func:`anoclip.clip.tta.draw_noise`, generator seeded
  with `seed` per image) into the nn.Linear and onto the tokens.
* **Input and output.** Decoding and preprocessing are anoclip's (both sides must see
  the same tensor); the map is resized to the image size and clamped to [0, 1] as
  ``predict`` returns it (the reference evaluates at S × S).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from anoclip.clip.backbone import Backbone
from anoclip.clip.encoder import VVEncoder
from anoclip.clip.prompts import is_texture, prompt_name, sentences
from anoclip.clip.tta import draw_noise, init_adapter
from anoclip.clip.views import augmented_views
from anoclip.data.images import ImageInput
from anoclip.data.loading import Preparer
from anoclip.data.preprocess import resize_map
from anoclip.settings import Settings


def anovl_loss(pred: torch.Tensor) -> torch.Tensor:
    """AnoVL's ``loss_func`` for probabilities `[1+K, ..., 2]` (index 0 clean):
    mean H(p_clean) + ½·mean[−log p_noisy[a] − log p_clean[n]]."""
    soft = -pred[0] * pred[0].log()
    mask = torch.zeros(pred[1:].shape)
    mask[..., 1] = 1
    hard = -mask * pred[1:].log() - (1 - mask) * pred[0].log()
    return soft.sum(-1).mean() + 0.5 * hard.sum(-1).mean()


def encode_prompts(backbone: Backbone, object_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """F `[C, 2]` (normal, abnormal) and T_s `[2S, C]`: each state's sentences as one batch
    through ``encode_text`` (AnoVL's ``encode_text_with_prompt_ensemble``)."""
    name = prompt_name(object_name, "clean")
    means, rows = [], []
    with torch.no_grad():
        for state in sentences(name, is_texture(object_name)):
            emb = backbone.model.encode_text(backbone.tokenizer(state)).float()
            mean = emb.mean(0)
            means.append(mean / mean.norm())
            rows.append(emb / emb.norm(dim=-1, keepdim=True))
    return torch.stack(means, dim=1), torch.cat(rows)


class AnoVLLoop:
    """AnoVL's per-image loop (module docstring), one object at a time, batch size 1.

    Building it encodes the object's text (:attr:`text_seconds` is not per-image time)
    unless `text` = (F, T_s) is given (encoded once elsewhere in the same run);
    :meth:`predict` then scores one image: returns (s_img, map `[H, W]` in [0, 1]).
    """

    def __init__(
        self,
        backbone: Backbone,
        object_name: str,
        settings: Settings | None = None,
        seed: int = 0,
        text: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        import time

        self.settings = s = settings or Settings()
        if (s.adapter, s.image_score, s.token_mode, s.tiling) != (
            "text", "cls_aug22", "anovl", "none"
        ):  # fmt: skip
            raise ValueError("the AnoVL loop mirrors the MVTec defaults only")
        if s.noise_mode != "gaussian" or not s.reset_optimizer_state or s.gaussian_sigma:
            raise ValueError("the AnoVL loop mirrors the MVTec defaults only")
        self.backbone, self.seed = backbone, seed
        self.encoder = VVEncoder(backbone.model.visual, s.vv_start_layer)
        self.preparer = Preparer(backbone.image_size, backbone.mean, backbone.std)
        start = time.perf_counter()
        self.text, self.bank = text or encode_prompts(backbone, object_name)
        self.text_seconds = time.perf_counter() - start
        self.adapter = nn.Linear(self.bank.shape[1], self.bank.shape[0])
        self.optimizer = torch.optim.AdamW(
            self.adapter.parameters(), lr=s.tta_lr, weight_decay=s.tta_weight_decay
        )

    def p_abnormal(self, emb: torch.Tensor) -> torch.Tensor:
        """softmax(n(e)·F / τ)[..., a] for embeddings `[..., C]`."""
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return (emb @ self.text / self.settings.temperature).softmax(dim=-1)[..., 1]

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """g(x) = ½x + ½·tanh(W n(x) + b)·T_s (AnoVL's ``TextAdapter``)."""
        affinity = torch.tanh(self.adapter(x / x.norm(dim=-1, keepdim=True)))
        return 0.5 * x + 0.5 * F.linear(affinity, self.bank.t())

    def predict(self, item: ImageInput) -> tuple[float, torch.Tensor]:
        """One image: (s_img, map at the image's size)."""
        s, sample = self.settings, self.preparer.prepare(item)
        x = sample.tiles  # [1, 3, S, S]
        with torch.no_grad():
            views = augmented_views(x)[0]  # [22, 3, S, S], ONE batch through both paths
            score = self.p_abnormal(self.encoder(views).cls).mean().item()
            tokens = self.encoder(x).vv[self.encoder.depth][0]  # identity again: [L, C]
        self._reset(tokens.shape)
        for step in range(s.tta_steps):
            pred = self._probs(torch.stack([tokens, tokens + self.noise[step]]))
            loss = anovl_loss(pred)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            probs = self.p_abnormal(self.adapt(tokens)).view(1, 1, *self.encoder.grid)
            probs = F.avg_pool2d(F.pad(probs, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            size = (x.shape[-2], x.shape[-1])
            m = F.interpolate(probs, size=size, mode="bilinear", align_corners=True)[0, 0]
        return score, resize_map(m, sample.size).clamp(0.0, 1.0)

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(n(g(X))·F / τ) `[2, L, 2]` for X `[2, L, C]`."""
        y = self.adapt(x)
        y = y / y.norm(dim=-1, keepdim=True)
        return (y @ self.text / self.settings.temperature).softmax(dim=-1)

    def _reset(self, shape: torch.Size) -> None:
        """Adapter reset (anoclip's seeded draw) and a fresh AdamW state (module docstring);
        the noise `[steps, L, C]` of this image."""
        s = self.settings
        gen = torch.Generator().manual_seed(self.seed)
        weight, bias = init_adapter(self.bank.shape[0], shape[-1], gen)
        self.noise = draw_noise(tuple(shape), s.tta_steps, s, gen)[:, 0]
        with torch.no_grad():
            self.adapter.weight.copy_(weight)
            self.adapter.bias.copy_(bias)
        self.optimizer.state.clear()
