"""What --model and --pretrained name, read without importing open_clip (which imports
torch), so the command line refuses a bad name or a missing file before the stack loads.

    model:      an open_clip model name (a config shipped in open_clip/model_configs/) or
                the path of a model-config JSON file
    pretrained: "none" (random weights), a local checkpoint file, or an open_clip tag (a
                tag is checked against open_clip's table when the model loads)

:func:`anoclip.clip.backbone.load_backbone` makes the same checks against open_clip's live
registry.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterable
from pathlib import Path

from anoclip.errors import BackboneError, close_names

NONE_TAGS = ("", "none", "random")


def check_model(model: str, known: Iterable[str] | None = None) -> bool:
    """True for a model-config file, False for a known open_clip name; BackboneError
    otherwise, naming the nearest names. `known`: open_clip's registry (default: the
    configs shipped with open_clip; the check is skipped where they cannot be found)."""
    if model.endswith(".json") or Path(model).is_file():
        if not Path(model).is_file():
            raise BackboneError(f"model config file not found: {model}")
        return True
    names = shipped_model_names() if known is None else list(known)
    if not names or model in names:
        return False
    close = close_names(model, names)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"unknown model {model!r}: not an open_clip model name nor a config JSON file.{hint}"
    )


def check_pretrained(pretrained: str | None, config: bool) -> str:
    """What `pretrained` names: "none" (random weights), "file" (a local checkpoint) or
    "tag"; BackboneError for a checkpoint path that is no file, or a tag beside a model
    `config` file (tags belong to open_clip's model names)."""
    value = (pretrained or "none").strip()
    if value.lower() in NONE_TAGS:
        return "none"
    if Path(value).is_file():
        return "file"
    if os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise BackboneError(f"checkpoint file not found: {value}")
    if config:
        raise BackboneError(
            f"pretrained tag {value!r} needs an open_clip model name, not a config file; "
            "pass a checkpoint file with --pretrained PATH"
        )
    return "tag"


@functools.cache
def shipped_model_names() -> list[str]:
    """The model names open_clip ships configs for (open_clip/model_configs/*.json), found
    without importing it; empty where the package cannot be found."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    folders = [Path(p) / "model_configs" for p in spec.submodule_search_locations]
    return sorted(f.stem for folder in folders for f in folder.glob("*.json"))
