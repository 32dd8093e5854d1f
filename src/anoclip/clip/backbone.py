"""Loading an open_clip backbone: by name + pretrained tag, local checkpoint, or config JSON.

Weights never download silently in an offline environment: when a pretrained tag is not
in the local cache and its host cannot be reached, :func:`load_backbone` raises
:class:`WeightsUnavailableError` within seconds with instructions for passing a local file.

Random weights (pretrained "none") are drawn from `seed` in a private RNG scope: the same
seed gives the same weights in every process, and the caller's global RNG state is left
as it was. Checkpoints are read safely (`torch.load(weights_only=True)` or safetensors)
and checked key by key and shape by shape against the model before loading, so a wrong
file is one :class:`BackboneError` line naming the first mismatching tensor.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.constants import (
    HF_SAFE_WEIGHTS_NAME,
    HF_WEIGHTS_NAME,
    OPENAI_DATASET_MEAN,
    OPENAI_DATASET_STD,
)
from open_clip.convert import convert_state_dict
from open_clip.model import (
    convert_to_custom_text_state_dict,
    resize_pos_embed,
    resize_text_pos_embed,
)

from anoclip.clip import towers
from anoclip.clip.catalog import check_model, check_pretrained
from anoclip.data.tensor_files import TensorFileError, load_tensors
from anoclip.errors import BackboneError, WeightsUnavailableError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e32"
_PROBE_TIMEOUT_S = 2.0


@dataclass
class Backbone:
    """An open_clip CLIP model ready for AnoCLIP, plus what is needed to feed it."""

    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    name: str
    pretrained: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    random_weights: bool
    seed: int | None = None  # the seed of random weights; None when weights were loaded

    @property
    def key(self) -> str:
        """Identifies the weights, for caching text embeddings."""
        base = f"{self.name}|{self.pretrained}"
        return f"{base}|seed={self.seed}" if self.random_weights else base

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def depth(self) -> int:
        return len(self.model.visual.transformer.resblocks)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` picks CUDA when present, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"device {device!r} requested but CUDA is not available")
    return dev


def load_backbone(
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str | torch.device | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> Backbone:
    """Build an open_clip model for AnoCLIP.

    Args:
        model: an open_clip model name (e.g. ``ViT-B-16-plus-240``) or the path of an
            open_clip model-config JSON (``{"embed_dim", "vision_cfg", "text_cfg"}``).
        pretrained: an open_clip pretrained tag (e.g. ``laion400m_e32``), the path of a local
            checkpoint file, or ``"none"`` for random weights (scores are then meaningless).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` picks CUDA when available.
        cache_dir: where downloaded weights are looked up / stored (open_clip's default if None).
        seed: seeds the random weights of pretrained "none" (and the throw-away initial
            weights under a checkpoint); the global RNG state is left untouched.
    """
    dev = resolve_device(device)
    pretrained = (pretrained or "none").strip()
    is_config = check_model(model, open_clip.list_models())
    if is_config:
        cfg_dict, tokenizer, name = _read_config(Path(model))
    else:
        name, cfg_dict, tokenizer = model, None, open_clip.get_tokenizer(model)
    mean, std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    weights = check_pretrained(pretrained, is_config)
    random_weights = weights == "none"
    checkpoint: str | None = None
    quick_gelu = False
    if random_weights:
        warnings.warn(
            f"anoclip: model {name!r} has RANDOM weights (pretrained='none'); its anomaly "
            "scores and maps are meaningless. Pass a pretrained tag or checkpoint file.",
            UserWarning,
            stacklevel=2,
        )
        pretrained = "none"
    elif weights == "file":
        checkpoint = pretrained
    else:
        cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise BackboneError(
                f"unknown pretrained tag {pretrained!r} for {name}; known tags: {tags or 'none'}"
                " (or pass a local checkpoint file)"
            )
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))
        quick_gelu = bool(cfg.get("quick_gelu", False))
        checkpoint = _fetch_weights(name, pretrained, cfg, cache_dir)

    state = None if checkpoint is None else read_checkpoint(checkpoint, name)  # fails fast
    with seeded_init(seed), _no_random_init_notice():
        if cfg_dict is not None:
            clip = _build_from_config(cfg_dict)
        else:
            clip = open_clip.create_model(
                name, force_quick_gelu=quick_gelu, device="cpu", pretrained_text=checkpoint is None
            )
    if checkpoint is not None:
        _load_checkpoint(clip, checkpoint, name, state)
    clip = clip.to(dev).eval().requires_grad_(False)
    _check_supported(clip, name)
    size = clip.visual.image_size
    return Backbone(
        model=clip,
        tokenizer=tokenizer,
        name=name,
        pretrained=str(pretrained),
        image_size=int(size[0] if isinstance(size, (tuple, list)) else size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        random_weights=random_weights,
        seed=seed if random_weights else None,
    )


@contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run the block with the CPU generator seeded from `seed`, then restore its state.

    Model construction draws its initial weights on the CPU, so this makes them a pure
    function of `seed`; the global CPU RNG is restored afterwards and no CUDA generator is
    touched (`torch.manual_seed` would reseed CUDA too, hence `default_generator`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class _RandomInitNotice(logging.Filter):
    """Drops open_clip's "Model initialized randomly" root-logger notice: random weights
    get anoclip's own warning, and checkpoints are loaded after construction."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.module == "factory" and "initialized randomly" in record.getMessage())


@contextmanager
def _no_random_init_notice() -> Iterator[None]:
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


def _read_config(path: Path) -> tuple[dict, Any, str]:
    """A model-config JSON -> (model kwargs, tokenizer, name), without open_clip's registry."""
    if not path.is_file():
        raise BackboneError(f"model config file not found: {path}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BackboneError(f"cannot read model config {path}: {exc}") from exc
    cfg = cfg.get("model_cfg", cfg)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise BackboneError(f"model config {path} lacks {missing}")
    text_cfg = cfg["text_cfg"]
    if "hf_tokenizer_name" in text_cfg:
        tokenizer = open_clip.HFTokenizer(text_cfg["hf_tokenizer_name"])
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    return cfg, tokenizer, path.stem


def _build_from_config(cfg: dict) -> torch.nn.Module:
    """An open_clip CLIP (or CustomTextCLIP) from model-config kwargs."""
    cfg = dict(cfg)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**cfg)


# --------------------------------------------------------------------------- checkpoints

_POS_EMBED_KEYS = (
    "visual.positional_embedding",
    "positional_embedding",
    "text.positional_embedding",
)


def _unusable(path: str, name: str, reason: str) -> BackboneError:
    return BackboneError(f"{path} is not a usable checkpoint for {name}: {reason}")


def read_checkpoint(path: str, name: str) -> dict[str, torch.Tensor] | None:
    """The tensors `{key: tensor}` of checkpoint file `path`, read without running code from
    it (`torch.load(weights_only=True)`, or safetensors); an open_clip training checkpoint's
    "state_dict" entry is taken. None for big_vision `.npz`/`.npy` weights, which open_clip
    reads itself. Raises a one-line BackboneError naming `path` and the model `name`.
    """
    if Path(path).suffix in (".npz", ".npy"):
        return None
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            raw: Any = load_file(path, device="cpu")
        else:
            raw = load_tensors(path)
    except TensorFileError as exc:
        raise _unusable(path, name, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - safetensors
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _unusable(path, name, f"not a readable safetensors file ({msg})") from None
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping) or not raw:
        raise _unusable(path, name, f"it holds a {type(raw).__name__}, not a dict of tensors")
    odd = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if odd:
        kind = type(raw[odd[0]]).__name__
        raise _unusable(path, name, f"entry {str(odd[0])!r} is a {kind}, not a tensor")
    return {str(k): v for k, v in raw.items()}


def _load_checkpoint(
    model: torch.nn.Module, path: str, name: str, state: dict[str, torch.Tensor] | None
) -> None:
    """Load checkpoint tensors `state` (read from `path`) into `model`, strictly, or raise a
    one-line BackboneError.

    open_clip's conventions first ("module." prefixes, its key conversions), then
    :func:`checkpoint_mismatch` against the model's own state dict, and only then
    open_clip's positional-embedding resizing and the strict load.
    """
    try:
        if state is None:  # big_vision weights
            open_clip.load_checkpoint(model, path, strict=True)
            return
        state = _open_clip_conventions(model, state)
    except Exception as exc:  # noqa: BLE001 - any failure is one user-facing message
        raise _unusable(path, name, _first_line(exc)) from exc
    problem = checkpoint_mismatch(model.state_dict(), state)
    if problem:
        raise _unusable(path, name, problem)
    try:
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - any failure is one user-facing message
        raise _unusable(path, name, _first_line(exc)) from exc


def _open_clip_conventions(model: torch.nn.Module, state: dict) -> dict:
    """open_clip's load_checkpoint key handling, short of resizing and loading."""
    if next(iter(state)).startswith("module."):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):  # a scalar vs a 1-element vector
        ours = getattr(model, key, None)
        theirs = state.get(key)
        if ours is not None and theirs is not None and theirs.numel() == ours.numel():
            state[key] = theirs.reshape(ours.shape)
    has_bias = getattr(model, "logit_bias", None) is not None
    if has_bias and "logit_bias" not in state and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    position_ids = "text.transformer.embeddings.position_ids"
    if position_ids in state and position_ids not in model.state_dict():
        del state[position_ids]
    return state


def checkpoint_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> str:
    """Why state dict `found` cannot load into a model with state dict `expected` ("" if it can).

    Names the first tensor (in the model's order) whose shape differs, with both shapes,
    and counts missing and unexpected keys. Positional embeddings may differ in their
    number of positions (open_clip resizes them), not in width.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    differ = [
        k
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape) and not _resizable(k, v, found[k])
    ]
    parts = []
    if differ:
        k = differ[0]
        parts.append(
            f"{len(differ)} of the model's {len(expected)} tensors differ in shape, the "
            f"first {k!r}: expected {_shape(expected[k])}, found {_shape(found[k])}"
        )
    if missing:
        parts.append(
            f"{len(missing)} of the model's {len(expected)} tensors missing (first {missing[0]!r})"
        )
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
    return "; ".join(parts)


def _resizable(key: str, expected: torch.Tensor, found: torch.Tensor) -> bool:
    """A positional embedding open_clip interpolates: same width, other length."""
    return (
        key in _POS_EMBED_KEYS
        and expected.ndim == found.ndim == 2
        and expected.shape[1] == found.shape[1]
    )


def _shape(t: Any) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _check_supported(model: torch.nn.Module, name: str) -> None:
    reason = towers.unsupported_reason(model)
    if reason:
        raise BackboneError(
            f"model {name!r} is not supported: {reason} (AnoCLIP needs an open_clip ViT vision "
            "tower with packed QKV attention and CLS-token pooling)"
        )


# --------------------------------------------------------------------------- weights


def _fetch_weights(name: str, tag: str, cfg: dict, cache_dir: str | None) -> str:
    """Path of the checkpoint for (name, tag): from the cache, else downloaded.

    open_clip 3.3.0 maps ViT-B-16-plus-240/laion400m_e32 to the *e31* Hugging Face repo;
    when the hub entry does not name the tag, the release URL is used instead.
    """
    hub = cfg.get("hf_hub", "")
    url = cfg.get("url", "")
    prefer_hub = bool(hub) and (not url or tag in hub)
    cached = _cached_file(hub, url, prefer_hub, cache_dir)
    if cached:
        return cached
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    if not prefer_hub:
        host = urlparse(url).hostname
    where = f"huggingface.co/{hub.rstrip('/')}" if prefer_hub else url
    offline = _env_flag("HF_HUB_OFFLINE") or _env_flag("ANOCLIP_OFFLINE")
    if offline or not _reachable(host or ""):
        reason = "offline mode is set" if offline else f"{host} cannot be reached"
        raise WeightsUnavailableError(
            f"pretrained weights {name}/{tag} are not cached and {reason}. Download the "
            f"checkpoint on a connected machine ({where}) and pass the file: "
            f"--pretrained /path/to/checkpoint.pt (Python: pretrained='/path/to/checkpoint.pt')."
        )
    log.info("downloading %s/%s from %s", name, tag, where)
    try:
        return open_clip.download_pretrained(cfg, prefer_hf_hub=prefer_hub, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001
        raise WeightsUnavailableError(
            f"download of {name}/{tag} from {where} failed ({str(exc).splitlines()[0]}); "
            "pass a local checkpoint file with --pretrained PATH"
        ) from exc


def _cached_file(hub: str, url: str, prefer_hub: bool, cache_dir: str | None) -> str | None:
    if prefer_hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        for fname in names:
            hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        return None
    target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    return str(target) if target.is_file() else None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _reachable(host: str, port: int = 443) -> bool:
    """A TCP connection to `host` opens within a few seconds."""
    if not host:
        return False
    result: list[bool] = []

    def probe() -> None:  # DNS lookups ignore socket timeouts, hence the thread
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_PROBE_TIMEOUT_S + 1.0)
    return bool(result and result[0])
