"""Loading an open_clip backbone: by name + pretrained tag, local checkpoint, or config JSON.

Weights never download silently in an offline environment: when a pretrained tag is not
in the local cache and its host cannot be reached, :func:`load_backbone` raises
:class:`WeightsUnavailableError` within seconds with instructions for passing a local file.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable
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
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

from .errors import BackboneError, WeightsUnavailableError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e32"
_NONE_TAGS = ("", "none", "random")
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

    @property
    def key(self) -> str:
        """Identifies the weights, for caching text embeddings."""
        return f"{self.name}|{self.pretrained}"

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
) -> Backbone:
    """Build an open_clip model for AnoCLIP.

    Args:
        model: an open_clip model name (e.g. ``ViT-B-16-plus-240``) or the path of an
            open_clip model-config JSON (``{"embed_dim", "vision_cfg", "text_cfg"}``).
        pretrained: an open_clip pretrained tag (e.g. ``laion400m_e32``), the path of a local
            checkpoint file, or ``"none"`` for random weights (scores are then meaningless).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None`` picks CUDA when available.
        cache_dir: where downloaded weights are looked up / stored (open_clip's default if None).
    """
    dev = resolve_device(device)
    pretrained = (pretrained or "none").strip()
    is_config = model.endswith(".json") or Path(model).is_file()
    if is_config:
        clip, tokenizer, name, mean, std = _build_from_config(Path(model))
    else:
        _check_model_name(model)
        name, mean, std = model, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
        clip, tokenizer = None, open_clip.get_tokenizer(model)

    random_weights = pretrained.lower() in _NONE_TAGS
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
    elif Path(pretrained).is_file():
        checkpoint = pretrained
    elif _looks_like_path(pretrained):
        raise BackboneError(f"checkpoint file not found: {pretrained}")
    elif is_config:
        raise BackboneError(
            f"pretrained tag {pretrained!r} needs an open_clip model name, not a config file; "
            "pass a checkpoint file with --pretrained PATH"
        )
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

    if clip is None:
        clip = open_clip.create_model(
            name, pretrained=checkpoint, force_quick_gelu=quick_gelu, device="cpu"
        )
    elif checkpoint is not None:
        _load_checkpoint(clip, checkpoint)
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
    )


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )


def _check_model_name(model: str) -> None:
    known = open_clip.list_models()
    if model in known:
        return
    close = difflib.get_close_matches(model, known, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"unknown model {model!r}: not an open_clip model name nor a config JSON file.{hint}"
    )


def _build_from_config(path: Path) -> tuple[torch.nn.Module, Any, str, tuple, tuple]:
    """Build an open_clip CLIP from a model-config JSON without touching open_clip's registry."""
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
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    model = cls(**cfg)
    text_cfg = cfg["text_cfg"]
    if "hf_tokenizer_name" in text_cfg:
        tokenizer = open_clip.HFTokenizer(text_cfg["hf_tokenizer_name"])
    else:
        tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    return model, tokenizer, path.stem, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


def _load_checkpoint(model: torch.nn.Module, path: str) -> None:
    try:
        open_clip.load_checkpoint(model, path, strict=True)
    except Exception as exc:  # noqa: BLE001 - any failure is one user-facing message
        raise BackboneError(f"cannot load checkpoint {path}: {str(exc).splitlines()[0]}") from exc


def _check_supported(model: torch.nn.Module, name: str) -> None:
    visual = getattr(model, "visual", None)
    ok = isinstance(visual, VisionTransformer) and all(
        isinstance(b, ResidualAttentionBlock) and isinstance(b.attn, torch.nn.MultiheadAttention)
        for b in visual.transformer.resblocks
    )
    if not ok or visual.attn_pool is not None or visual.pool_type != "tok":
        raise BackboneError(
            f"model {name!r} is not supported: AnoCLIP needs an open_clip ViT vision tower "
            "with standard attention blocks and CLS-token pooling"
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
