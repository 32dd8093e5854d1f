"""Settings of the AnoCLIP pipeline (METHOD.md §4), with the official code's defaults.

Two records, kept apart on purpose:

* :class:`Settings` — what is computed (numerics). Every field has the value the official
  AnoVL code uses on MVTec AD unless its comment says otherwise. It enters the result
  fingerprint (:func:`fingerprint`): a resumed run must have the same one.
* :class:`Runtime` — how it is computed (batch size, workers, device, precision). Changing
  it does not change the fingerprint, so a rerun with another batch size resumes.

Allowed values of each choice are spelled once, as the ``Literal`` types below; validation,
the command line's choices and the tables read them from there. This module imports no
torch, so the command line can validate arguments before the model stack loads.

Vocabulary: ``anovl`` names the official AnoVL code's behaviour; ``ref`` names visual
reference images (modes ``dual`` / ``mutual``); ``published`` names numbers from papers;
a *tile* is one square model input cut from an image (an image has one or more).
"""

from __future__ import annotations

import difflib
import functools
import types
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from anoclip.errors import UnknownSettingError, UsageError
from anoclip.extras import EMBEDDED_WEIGHTS

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e32"

TokenMode = Literal["anovl", "multilayer"]
ImageScore = Literal["cls_aug22", "cls"]
AdapterKind = Literal["text", "linear"]
NoiseMode = Literal["gaussian", "masked"]
ClassNames = Literal["clean", "verbatim"]
Domain = Literal["auto", "object", "texture"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]
ViewEngine = Literal["fused", "open_clip", "openvino", "onnxruntime"]
Tiling = Literal["none", "auto", "two_tile"]
TextEnsemble = Literal["anovl", "normalized"]
Pairing = Literal["cls_nn", "matching", "random"]
RefAgg = Literal["interval_mean", "min", "mean"]
RefFilter = Literal["none", "text"]
RefFeatures = Literal["auto", "vv", "ori"]
Fusion = Literal["linear", "harmonic", "batch_z", "visual"]
PatchGrid = Literal["coarsest", "finest"]
LayerFusion = Literal["concat", "mean"]
BankCombine = Literal["min", "mean", "max"]
BankSearch = Literal["exact", "ivf"]
CLIP_VISUAL = "clip"
TIMM_PREFIX = "timm:"
TextTokens = Literal["full", "trimmed"]
Mode = Literal["anoclip", "dual", "mutual"]
TTAKind = Literal["none", "noise", "synth", "both"]
RefCount = int | str  # references per image: 0 (alone), 1 (dual), k >= 1, or "all"

# Old setting values that keep working for one release, with a DeprecationWarning.
DEPRECATED_VALUES = {
    ("token_mode", "reference"): "anovl",
    ("text_ensemble", "reference"): "anovl",
}


def choices(kind: Any) -> tuple[str, ...]:
    """The allowed values of a ``Literal`` choice, e.g. ``choices(Mode)``."""
    return tuple(get_args(kind))


class _Derived:
    """What follows from the fields of :class:`Settings` (its base, so that the record itself
    is its fields): validation on construction, the scored layers, which path runs."""

    def __post_init__(self) -> None:
        _validate(self)

    def token_layers(self, depth: int) -> tuple[int, ...]:
        """The 1-based layers whose V-V tokens are scored, for a tower of `depth` blocks."""
        layers = (depth,) if self.token_mode == "anovl" else self.layers
        bad = [x for x in layers if not self.vv_start_layer <= x <= depth]
        if bad:
            _fail(
                f"layers {bad} are outside [{self.vv_start_layer}, {depth}] "
                f"(vv_start_layer={self.vv_start_layer}, tower depth {depth})"
            )
        return tuple(layers)

    @property
    def patch_scorer(self) -> bool:
        """Whether the patch scorer runs even without a bank: a timm visual backbone, or
        fusion="visual" (otherwise only a bank brings it in; patch_scorer.uses_patch_scorer)."""
        return self.visual_backbone != CLIP_VISUAL or self.fusion == "visual"

    @property
    def needs_clip(self) -> bool:
        """Whether a CLIP model computes anything: not for fusion="visual" on a timm
        backbone (the visual references alone; no CLIP model is built then)."""
        return not (self.fusion == "visual" and self.visual_backbone != CLIP_VISUAL)

    def ref_tokens(self, depth: int, patch_scorer: bool = False) -> tuple[str, tuple[int, ...]]:
        """(features, 1-based layers) of the visual-branch CLIP tokens, "auto" resolved: the
        token path -> ("vv", (depth,)); the patch scorer -> ("ori", quarter-depth blocks)."""
        features = self.ref_features
        if features == "auto":
            features = "ori" if patch_scorer else "vv"
        layers = self.ref_layers
        if not layers:
            layers = quarter_layers(depth) if patch_scorer else (depth,)
        low = self.vv_start_layer if features == "vv" else 1
        bad = [x for x in layers if not low <= x <= depth]
        if bad:
            _fail(f"ref_layers {bad} are outside [{low}, {depth}]")
        return features, tuple(layers)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class Settings(_Derived):
    """What the AnoCLIP pipeline computes. Defaults reproduce the official code (MVTec)."""

    # --- encoder (§2.1, §2.2)
    vv_start_layer: int = 1
    """First block (1-based) whose V-V attention feeds the V-V path."""
    token_mode: TokenMode = "anovl"
    """"anovl": final-layer V-V tokens only; "multilayer": one map per layer in `layers`."""
    layers: tuple[int, ...] = (3, 6, 9, 12)
    """Layers (1-based) used in multilayer mode; ignored in "anovl" mode."""

    # --- prompts (§2.3)
    class_names: ClassNames = "clean"
    """"clean": `metal_nut` -> `metal nut`; "verbatim": folder names as the official code."""
    domain: Domain = "auto"
    """Template family: "auto" routes the 5 MVTec textures to the texture family."""
    text_ensemble: TextEnsemble = "anovl"
    """"anovl": mean of unnormalised sentence embeddings, then normalised (AnoVL);
    "normalized": normalise, average, normalise again (APRIL-GAN)."""
    text_tokens: TextTokens = "full"
    """"full": 77-token context, bit-identical to the official code; "trimmed": only the used
    token positions (exact up to rounding, ~4x faster text encoding for a new object)."""

    # --- scoring (§2.4)
    temperature: float = 1.0
    """τ in p_a = σ(Δcos/τ). AnoVL 1.0; WinCLIP/anomalib use 0.07."""
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
    """True: fresh AdamW per image (ours, golden). False: the AnoVL quirk of one
    optimizer per object whose moments leak from one image to the next (sequential)."""

    # --- visual references: modes "dual" and "mutual" (§3, [DESIGN])
    pairing: Pairing = "cls_nn"
    """With one reference: "cls_nn" nearest image by CLS; "matching" disjoint pairs,
    most similar first; "random" seeded disjoint pairs."""
    ref_agg: RefAgg = "interval_mean"
    """Combining R references per patch: mean of the ⌈0.3·R⌉ smallest distances (MuSc),
    "min" or "mean"."""
    ref_filter: RefFilter = "none"
    """"text": reference patches above their own text map's `ref_filter_quantile` are not
    matched (a defective reference cannot explain away the same defect)."""
    ref_filter_quantile: float = 0.9
    ref_features: RefFeatures = "auto"
    """Visual-branch CLIP tokens: V-V ("vv") or original-path ("ori", as MuSc). "auto": V-V
    for the token path (dual/mutual with the text branch, the Dual-Image design), "ori" for
    the patch scorer (fusion=visual or a bank; MuSc's published ViT-B/16+ setting)."""
    ref_layers: tuple[int, ...] = ()
    """1-based layers of the visual-branch CLIP tokens. () = auto: the last layer for the
    token path; the four quarter-depth blocks for the patch scorer (3, 6, 9, 12 of 12 blocks:
    MuSc's --feature_layers 2 5 8 11 for ViT-B)."""
    fusion: Fusion = "linear"
    fusion_alpha: float = 0.5
    """Map weight of the text branch: α·text + (1−α)·visual."""
    fusion_beta: float = 0.5
    """Score weight of the text branch: β·p_a(CLS) + (1−β)·max(visual map)."""
    fusion_temperature: float = 0.07
    """τ of the text map and score inside the fusion (at τ = 1 they sit near 0.5)."""
    synth_textures: str | None = None
    """Folder of texture images as synthesized-anomaly sources (default: the image itself)."""

    # --- visual feature source and patch scoring (issue 10; [DESIGN], MuSc-style)
    visual_backbone: str = CLIP_VISUAL
    """Visual-branch features: "clip" (the CLIP model's own tokens) or "timm:<model name>" (a
    timm feature extractor, its own input per image, weights `visual_pretrained`)."""
    visual_pretrained: str | None = None
    """Local checkpoint file of a timm visual backbone (never downloaded); None: the weights
    installed with anoclip, for the backbones that have them (timm:tf_efficientnet_lite0)."""
    visual_size: int = 0
    """Square input side of a timm visual backbone; 0: its pretrained config's."""
    visual_strides: tuple[int, ...] = (4, 8, 16, 32)
    """Stages of a timm visual backbone, by stride (reduction). Default: every stage from
    stride 4 to 32 (benchmarks/real_features.py: fine stages find screw's small defects,
    coarse ones transistor's missing and misplaced parts)."""
    patch_radii: tuple[int, ...] = (1, 3, 5)
    """Patch scorer: r×r neighbourhood means (odd r), distances averaged over radii."""
    patch_grid: PatchGrid | int = 12
    """Patch scorer: the common grid of the layers, as a stride in input pixels (12: 20×20
    at 240 px, chosen by benchmarks/real_features.py), or "finest"/"coarsest" (that
    layer's own grid; the finest has 4× the patches per stride step)."""
    layer_fusion: LayerFusion = "concat"
    """Patch scorer: "concat" one joint nearest neighbour over the concatenated layers;
    "mean" one per layer, distances averaged (MuSc)."""
    rscin: bool = True
    """Set modes of the patch scorer: RsCIN kNN smoothing of image scores (MuSc; +0.018
    image AUROC on transistor mutual-all, benchmarks/real_features.py)."""
    duplicate_threshold: float = 0.95
    """Patch scorer, set modes: skip references whose common-grid features have cosine
    above this with the query's (near-duplicates explain defects away); 1 = off."""
    series_ratio: float = 0.7
    """Set modes: skip references near-identical to the image (references/series.py); 0 off."""
    refs_cap: int = 128
    """Patch scorer, refs="all": the cap on references, most similar first (0: no cap)."""
    bank_combine: BankCombine = "min"
    """Mutual (or dual) scores with a normal bank: "min", "mean" or "max" per patch."""
    bank_search: BankSearch = "exact"
    """Bank search: "exact", or "ivf" (faiss IVF, extra `ann`, banks of ≥ 50,000 patches;
    benchmarks/bank_search.py)."""
    bank_nprobe: int = 8
    """bank_search="ivf": inverted lists searched per query patch."""
    border_depth: int = 3
    """Patch scorer: border classes put on the interior's scale (references/border.py); 0 off."""
    global_k: float = 4.0
    """Patch scorer: the global branch adds past κ spreads (references/global_score.py); 0 off."""

    # --- input (§1, §2.7)
    tiling: Tiling = "none"
    """"none": square resize (MVTec). "two_tile"/"auto" (auto: only non-square inputs):
    VisA tiles along the longer side, stitched back to the original aspect."""


def quarter_layers(depth: int) -> tuple[int, ...]:
    """The blocks at each quarter of the depth (12 -> 3, 6, 9, 12; 24 -> 6, 12, 18, 24)."""
    return tuple(sorted({max(1, round(depth * q / 4)) for q in (1, 2, 3, 4)}))


def _validate(self: Settings) -> None:
    """Map deprecated values, check choices and ranges, normalise tuples (in place)."""
    for f in fields(self):
        old = (f.name, getattr(self, f.name))
        if isinstance(old[1], str) and old in DEPRECATED_VALUES:
            new = DEPRECATED_VALUES[old]
            warnings.warn(
                f"setting {f.name}={old[1]!r} is deprecated; use {f.name}={new!r}",
                DeprecationWarning,
                stacklevel=4,
            )
            object.__setattr__(self, f.name, new)
        _check_choice(f.name, getattr(self, f.name), field_kinds()[f.name])
    _check(
        not _is_int(self.patch_grid) or self.patch_grid >= 1, "patch_grid as a stride must be >= 1"
    )
    _check(self.vv_start_layer >= 1, "vv_start_layer must be >= 1")
    _check(len(self.layers) > 0 and all(x >= 1 for x in self.layers), "layers must be >= 1")
    _check(self.temperature > 0, "temperature must be > 0")
    _check(self.gaussian_sigma >= 0, "gaussian_sigma must be >= 0")
    _check(self.tta_steps >= 0, "tta_steps must be >= 0")
    _check(self.tta_lr > 0, "tta_lr must be > 0")
    _check(self.tta_noise_sigma >= 0, "tta_noise_sigma must be >= 0")
    _check(0 < self.ref_filter_quantile <= 1, "ref_filter_quantile must be in (0, 1]")
    _check(all(x >= 1 for x in self.ref_layers), "ref_layers must be >= 1")
    _check(0 <= self.fusion_alpha <= 1 and 0 <= self.fusion_beta <= 1, "fusion weights in [0, 1]")
    _check(self.fusion_temperature > 0, "fusion_temperature must be > 0")
    _validate_visual(self)
    object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
    object.__setattr__(self, "ref_layers", tuple(int(x) for x in self.ref_layers))


def _validate_visual(self: Settings) -> None:
    """The visual source and the patch scorer's settings (no file access here)."""
    vb, timm = self.visual_backbone, self.visual_backbone.startswith(TIMM_PREFIX)
    _check(
        vb == CLIP_VISUAL or (timm and len(vb) > len(TIMM_PREFIX)),
        f"visual_backbone={vb!r}; use clip or timm:<model name>",
    )
    _check(
        not timm
        or bool(self.visual_pretrained)
        or vb.removeprefix(TIMM_PREFIX) in EMBEDDED_WEIGHTS,
        f"visual_backbone={vb} needs visual_pretrained=FILE (weights ship only for "
        f"{', '.join(TIMM_PREFIX + n for n in EMBEDDED_WEIGHTS)})",
    )
    _check(
        timm or not self.visual_pretrained, "visual_pretrained needs visual_backbone=timm:<name>"
    )
    _check(self.visual_size >= 0, "visual_size must be >= 0 (0: the backbone's own)")
    _check(len(self.visual_strides) > 0 and all(x >= 1 for x in self.visual_strides),
           "visual_strides must be >= 1")  # fmt: skip
    _check(len(self.patch_radii) > 0 and all(r >= 1 and r % 2 == 1 for r in self.patch_radii),
           "patch_radii must be odd and >= 1")  # fmt: skip
    _check(0 < self.duplicate_threshold <= 1, "duplicate_threshold must be in (0, 1]")
    _check(0 <= self.series_ratio < 1, "series_ratio must be in [0, 1) (0 = off)")
    _check(self.refs_cap >= 0, "refs_cap must be >= 0 (0 = every other image)")
    _check(self.bank_nprobe >= 1, "bank_nprobe must be >= 1")
    _check(self.border_depth >= 0, "border_depth must be >= 0 (0 = off)")
    _check(self.global_k >= 0, "global_k must be >= 0 (0 = off)")
    for name in ("visual_strides", "patch_radii"):
        object.__setattr__(self, name, tuple(int(x) for x in getattr(self, name)))


@dataclass(frozen=True)
class Runtime:
    """How the pipeline runs; never changes a result beyond float rounding.

    batch_size: images encoded together. workers: DataLoader processes decoding image files
    (None: 1 when there is more than one batch of files, else 0). device: None picks CUDA
    when present. precision: "fp32" (default); "fp16"/"bf16" autocast on CUDA, "bf16"
    autocast on the CPU too; "int8" dynamic int8 Linear layers for the 21 augmented views
    on the CPU. Reduced precisions move scores and maps slightly (benchmarks/speed.py).
    view_engine: what runs the 21 augmented views of the 22-view image score (see
    :mod:`anoclip.clip.plain`): "fused" (default), "open_clip" (the tower's own forward),
    "openvino" or "onnxruntime" (CPU; optional extra ``export``; equal float32 outputs).
    """

    batch_size: int = 8
    workers: int | None = None
    device: str | None = None
    precision: Precision = "fp32"
    view_engine: ViewEngine = "fused"

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "batch_size must be >= 1")
        _check(self.workers is None or self.workers >= 0, "workers must be >= 0")
        for f in fields(self):
            _check_choice(f.name, getattr(self, f.name), field_kinds()[f.name])
        _check(
            self.precision != "int8" or self.view_engine == "fused",
            "precision='int8' needs view_engine='fused'",
        )
        _check(
            self.view_engine != "onnxruntime" or self.precision == "fp32",
            "view_engine='onnxruntime' runs in float32 only (precision='fp32')",
        )

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword overrides -> (Settings fields, Runtime fields); unknown names are an error."""
    unknown = sorted(set(overrides) - set(Settings.names()) - set(Runtime.names()))
    if unknown:
        raise unknown_settings(unknown)
    numeric = {k: v for k, v in overrides.items() if k in Settings.names()}
    runtime = {k: v for k, v in overrides.items() if k in Runtime.names()}
    return numeric, runtime


def apply(settings: Settings, runtime: Runtime, **overrides: Any) -> tuple[Settings, Runtime]:
    """Both records with keyword overrides applied (each name goes where it belongs)."""
    numeric, run = split_overrides(overrides)
    return replace(settings, **numeric), replace(runtime, **run)


# ----------------------------------------------------------------------------- text form
# Each field's annotation says how its text (`--set KEY=VALUE`) is read and which words it
# allows: Literal -> the word itself (checked against the Literal by the record), int,
# float, bool (true/false, 1/0, yes/no), tuple[int, ...] ("3,6,9"), and unions of them
# (`X | None`: "none" -> None; `Literal[...] | int`: a number, else a word).


@functools.cache
def field_kinds() -> dict[str, Any]:
    """Field name -> its resolved annotation, for :class:`Settings` and :class:`Runtime`."""
    return {**get_type_hints(Settings), **get_type_hints(Runtime)}


def parse_setting(pair: str) -> tuple[str, Any]:
    """`KEY=VALUE` text -> (field name, value read by the field's annotation); dashes in
    KEY read as underscores. Ranges and choices are checked when the record is built."""
    key, sep, raw = pair.partition("=")
    key = key.strip().replace("-", "_")
    if not sep:
        raise UsageError("expected KEY=VALUE")
    kind = field_kinds().get(key)
    if kind is None:
        raise unknown_settings([key])
    return key, read_value(kind, raw.strip())


def read_value(kind: Any, raw: str) -> Any:
    """Text -> a value of the annotated type `kind` (UsageError naming the type otherwise)."""
    members = _members(kind)
    if type(None) in members and raw.lower() == "none":
        return None
    # numbers before words: "12" is a stride, "finest" a layer's grid
    for member in sorted(members, key=lambda m: m is str or get_origin(m) is Literal):
        try:
            return _read_one(member, raw)
        except ValueError:
            continue
    raise UsageError(f"not a valid {_kind_name(kind)}")


def _read_one(kind: Any, raw: str) -> Any:
    """Text -> one non-union type; ValueError when it does not read as one."""
    if kind is str or get_origin(kind) is Literal:
        return raw
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(raw)
        return raw.lower() in ("true", "1", "yes")
    if kind in (int, float):
        return kind(raw)
    if get_origin(kind) is tuple:
        return tuple(_read_one(get_args(kind)[0], x.strip()) for x in raw.split(",") if x.strip())
    raise ValueError(f"no text form for {kind}")


def unknown_settings(names: Iterable[str]) -> UnknownSettingError:
    """The error naming unknown settings and the nearest known names (not all of them)."""
    names = list(names)
    known = list(field_kinds())
    close = dict.fromkeys(m for n in names for m in difflib.get_close_matches(n, known, n=3))
    hint = (f"; did you mean {', '.join(close)}?" if close
            else "; the names are the fields of anoclip.Settings and anoclip.Runtime")  # fmt: skip
    what = "setting" if len(names) == 1 else "settings"
    return UnknownSettingError(f"unknown {what}: {', '.join(names)}{hint}")


def _check_choice(name: str, value: Any, kind: Any) -> None:
    """A field whose annotation holds a Literal: one of its words, or a number where the
    annotation also allows an int (`Literal[...] | int`)."""
    members = _members(kind)
    words = [w for m in members if get_origin(m) is Literal for w in get_args(m)]
    if not words or value in words or (int in members and _is_int(value)):
        return
    also = " or an integer" if int in members else ""
    _fail(f"{name}={value!r}; choose one of {', '.join(words)}{also}")


def _members(kind: Any) -> tuple[Any, ...]:
    """The types of a union annotation (`A | B`), or the annotation alone."""
    return get_args(kind) if get_origin(kind) in (Union, types.UnionType) else (kind,)


def _kind_name(kind: Any) -> str:
    """How an annotation reads in an error: "int", "float or none", "list of int (3,6,9)"."""
    names = []
    for m in _members(kind):
        if m is type(None):
            names.append("none")
        elif get_origin(m) is tuple:
            names.append(f"comma-separated list of {_kind_name(get_args(m)[0])}")
        else:
            names.append(getattr(m, "__name__", str(m)))
    return " or ".join(names)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def fingerprint(settings: Settings, **identity: Any) -> dict[str, Any]:
    """What determines a result: the numeric settings plus `identity` (model, weights,
    seed, object, mode, refs, tta...). Runtime choices are deliberately absent."""
    return {**{k: _plain(v) for k, v in identity.items()}, "settings": _plain(asdict(settings))}


def differing_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the fields whose values differ between two fingerprints (nested)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def _plain(value: Any) -> Any:
    """JSON-like form (tuples as lists), so fingerprints compare equal after a round trip."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# Protocol presets (METHOD.md §1, §2.4, §2.5, §4): seed and settings per dataset.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "mvtec": {
            "seed": 111,
            "settings": {"tiling": "none", "image_score": "cls_aug22", "adapter": "text"},
        },
        "visa": {
            "seed": 42,
            "settings": {"tiling": "two_tile", "image_score": "cls", "adapter": "linear"},
        },
    },
}


def preset(name: str, dataset: str) -> dict[str, Any]:
    """A protocol preset for a dataset (datasets without an entry use MVTec's)."""
    table = PRESETS[name]
    return table.get(dataset, table["mvtec"])


def tta_kind(tta: bool | str | None) -> TTAKind:
    """True -> "noise" (AnoCLIP), False/None -> "none", or one of the TTA kinds."""
    if tta is True:
        return "noise"
    if tta is False or tta is None:
        return "none"
    if tta not in choices(TTAKind):
        raise UsageError(f"tta must be a bool or one of {', '.join(choices(TTAKind))}, got {tta!r}")
    return tta


def ref_count(mode: Mode, refs: int | str | None) -> RefCount:
    """References per image: 0 (anoclip), 1 (dual), k or "all" (mutual)."""
    if mode not in choices(Mode):
        raise UsageError(f"mode must be one of {', '.join(choices(Mode))}, got {mode!r}")
    if mode == "anoclip":
        if refs not in (None, 0):
            raise UsageError("refs needs mode='dual' or 'mutual'")
        return 0
    if mode == "dual":
        if refs not in (None, 1):
            raise UsageError("mode='dual' uses exactly one reference; use mode='mutual' for more")
        return 1
    if refs is None or refs == "all":
        return "all"
    if isinstance(refs, str) and refs.isdigit():
        refs = int(refs)
    if isinstance(refs, bool) or not isinstance(refs, int) or refs < 1:
        raise UsageError(f"refs must be a positive integer or 'all', got {refs!r}")
    return refs


def _fail(message: str) -> None:
    raise UsageError(f"invalid setting: {message}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        _fail(message)
