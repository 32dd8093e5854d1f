"""Settings of the AnoCLIP pipeline (METHOD.md §4), with reference defaults.

Every field has the value the official AnoVL code uses on MVTec AD unless the
comment says otherwise. Settings are immutable; use :func:`dataclasses.replace`
(or keyword overrides on :class:`anoclip.Detector`) to change them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

TokenMode = Literal["reference", "multilayer"]
ImageScore = Literal["cls_aug22", "cls"]
AdapterKind = Literal["text", "linear"]
NoiseMode = Literal["gaussian", "masked"]
ClassNames = Literal["clean", "verbatim"]
Domain = Literal["auto", "object", "texture"]
Precision = Literal["fp32", "fp16", "bf16"]
Tiling = Literal["none", "auto", "two_tile"]
TextEnsemble = Literal["reference", "normalized"]
Pairing = Literal["cls_nn", "matching", "random"]
RefAgg = Literal["interval_mean", "min", "mean"]
RefFilter = Literal["none", "text"]
RefFeatures = Literal["vv", "ori"]
Fusion = Literal["linear", "harmonic", "batch_z"]
TextTokens = Literal["full", "trimmed"]


@dataclass(frozen=True)
class Settings:
    """What the AnoCLIP pipeline computes. Defaults reproduce the reference (MVTec)."""

    # --- encoder (§2.1, §2.2)
    vv_start_layer: int = 1
    """First block (1-based) whose V-V attention feeds the V-V path."""
    token_mode: TokenMode = "reference"
    """"reference": final-layer V-V tokens only; "multilayer": one map per layer in `layers`."""
    layers: tuple[int, ...] = (3, 6, 9, 12)
    """Layers (1-based) used in multilayer mode; ignored in reference mode."""

    # --- prompts (§2.3)
    class_names: ClassNames = "clean"
    """"clean": `metal_nut` -> `metal nut`; "verbatim": folder names as the reference."""
    domain: Domain = "auto"
    """Template family: "auto" routes the 5 MVTec textures to the texture family."""
    text_ensemble: TextEnsemble = "reference"
    """"reference": mean of unnormalised sentence embeddings, then normalised (AnoVL);
    "normalized": normalise, average, normalise again (APRIL-GAN)."""
    text_tokens: TextTokens = "full"
    """"full": 77-token context, bit-identical to the reference; "trimmed": only the used
    token positions (exact up to rounding, ~4x faster text encoding for a new object)."""

    # --- scoring (§2.4)
    temperature: float = 1.0
    """τ in p_a = σ(Δcos/τ). Reference 1.0; WinCLIP/anomalib use 0.07."""
    image_score: ImageScore = "cls_aug22"
    """"cls_aug22": mean over the 22 augmented views; "cls": the single view."""
    gaussian_sigma: float = 0.0
    """Optional Gaussian smoothing of the map, in pixels at the model input size (0 = off)."""

    # --- test-time adaptation (§2.5)
    adapter: AdapterKind = "text"
    tta_steps: int = 5
    tta_lr: float = 1e-3
    tta_weight_decay: float = 0.01
    tta_noise_sigma: float = 0.055
    noise_mode: NoiseMode = "gaussian"
    reset_optimizer_state: bool = True
    """True: fresh AdamW per image (ours, golden). False: the reference quirk of one
    optimizer per object whose moments leak from one image to the next (sequential)."""

    # --- visual references: modes "dual" and "mutual" (§3, [DESIGN])
    pairing: Pairing = "cls_nn"
    """With one reference: "cls_nn" nearest image by CLS; "matching" disjoint pairs,
    most similar first; "random" seeded disjoint pairs."""
    ref_agg: RefAgg = "interval_mean"
    """Combining R references per patch: mean of the ⌈0.3·R⌉ smallest distances (MuSc),
    "min" or "mean"."""
    ref_filter: RefFilter = "none"
    """"text": reference patches above their own text map's `ref_filter_quantile` are
    not matched, so a defective reference cannot explain away the same defect."""
    ref_filter_quantile: float = 0.9
    ref_features: RefFeatures = "vv"
    """Visual-branch tokens: V-V ("vv") or original-path ("ori", as MuSc) tokens."""
    ref_layers: tuple[int, ...] = ()
    """Layers of the visual-branch tokens (distances averaged); () = the last layer."""
    fusion: Fusion = "linear"
    fusion_alpha: float = 0.5
    """Map weight of the text branch: α·text + (1−α)·visual."""
    fusion_beta: float = 0.5
    """Score weight of the text branch: β·p_a(CLS) + (1−β)·max(visual map)."""
    fusion_temperature: float = 0.07
    """τ of the text map and score inside the fusion (at τ = 1 they sit near 0.5)."""
    synth_textures: str | None = None
    """Folder of texture images as synthesized-anomaly sources (default: the image itself)."""

    # --- input (§1, §2.7)
    tiling: Tiling = "none"
    """"none": square resize (MVTec). "two_tile"/"auto" (auto: only non-square inputs):
    VisA tiles along the longer side, stitched back to the original aspect."""

    # --- runtime
    batch_size: int = 8
    precision: Precision = "fp32"
    """Half precision applies on CUDA only; CPU always computes in fp32."""

    def __post_init__(self) -> None:
        _check(self.vv_start_layer >= 1, "vv_start_layer must be >= 1")
        _check(self.token_mode in ("reference", "multilayer"), f"token_mode {self.token_mode!r}")
        _check(len(self.layers) > 0 and all(x >= 1 for x in self.layers), "layers must be >= 1")
        _check(self.class_names in ("clean", "verbatim"), f"class_names {self.class_names!r}")
        _check(self.domain in ("auto", "object", "texture"), f"domain {self.domain!r}")
        _check(
            self.text_ensemble in ("reference", "normalized"),
            f"text_ensemble {self.text_ensemble!r}",
        )
        _check(self.text_tokens in ("full", "trimmed"), f"text_tokens {self.text_tokens!r}")
        _check(self.temperature > 0, "temperature must be > 0")
        _check(self.image_score in ("cls_aug22", "cls"), f"image_score {self.image_score!r}")
        _check(self.gaussian_sigma >= 0, "gaussian_sigma must be >= 0")
        _check(self.adapter in ("text", "linear"), f"adapter {self.adapter!r}")
        _check(self.tta_steps >= 0, "tta_steps must be >= 0")
        _check(self.tta_lr > 0, "tta_lr must be > 0")
        _check(self.tta_noise_sigma >= 0, "tta_noise_sigma must be >= 0")
        _check(self.noise_mode in ("gaussian", "masked"), f"noise_mode {self.noise_mode!r}")
        _check(self.tiling in ("none", "auto", "two_tile"), f"tiling {self.tiling!r}")
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.pairing in ("cls_nn", "matching", "random"), f"pairing {self.pairing!r}")
        _check(self.ref_agg in ("interval_mean", "min", "mean"), f"ref_agg {self.ref_agg!r}")
        _check(self.ref_filter in ("none", "text"), f"ref_filter {self.ref_filter!r}")
        _check(0 < self.ref_filter_quantile <= 1, "ref_filter_quantile must be in (0, 1]")
        _check(self.ref_features in ("vv", "ori"), f"ref_features {self.ref_features!r}")
        _check(all(x >= 1 for x in self.ref_layers), "ref_layers must be >= 1")
        _check(self.fusion in ("linear", "harmonic", "batch_z"), f"fusion {self.fusion!r}")
        _check(
            0 <= self.fusion_alpha <= 1 and 0 <= self.fusion_beta <= 1, "fusion weights in [0, 1]"
        )
        _check(self.fusion_temperature > 0, "fusion_temperature must be > 0")
        _check(self.precision in ("fp32", "fp16", "bf16"), f"precision {self.precision!r}")
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "ref_layers", tuple(int(x) for x in self.ref_layers))

    def token_layers(self, depth: int) -> tuple[int, ...]:
        """The 1-based layers whose V-V tokens are scored, for a tower of `depth` blocks."""
        layers = (depth,) if self.token_mode == "reference" else self.layers
        bad = [x for x in layers if not self.vv_start_layer <= x <= depth]
        if bad:
            raise ValueError(
                f"layers {bad} are outside [{self.vv_start_layer}, {depth}] "
                f"(vv_start_layer={self.vv_start_layer}, tower depth {depth})"
            )
        return tuple(layers)

    def reference_layers(self, depth: int) -> tuple[int, ...]:
        """The 1-based layers of the visual-branch tokens."""
        layers = self.ref_layers or (depth,)
        low = self.vv_start_layer if self.ref_features == "vv" else 1
        bad = [x for x in layers if not low <= x <= depth]
        if bad:
            raise ValueError(f"ref_layers {bad} are outside [{low}, {depth}]")
        return tuple(layers)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"invalid setting: {message}")
