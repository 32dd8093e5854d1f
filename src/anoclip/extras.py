"""Optional dependencies (pyproject extras), imported on use with an error naming the extra.

Extras:

    export: onnx, onnxscript, onnxruntime, openvino  (anoclip.deploy.convert, anoclip.deploy.engine)
    ray:    ray[data]                                (anoclip.deploy.ray_cluster)
    ann:    faiss-cpu                                (bank_search="ivf", anoclip.references.bank)
"""

from __future__ import annotations

import importlib
import importlib.util
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
