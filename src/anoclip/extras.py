"""Optional dependencies (pyproject extras), imported on use with an error naming the extra.

Extras:

    export: onnx, onnxscript, onnxruntime, openvino  (anoclip.export, anoclip.engine)
    ray:    ray[data]                                (anoclip.ray_runner)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import AnoclipError


class MissingExtraError(AnoclipError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise :class:`MissingExtraError` naming ``anoclip[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise MissingExtraError(
            f"{purpose} needs the optional package {package!r}: pip install anoclip[{extra}]"
        ) from exc
