"""anoclip: zero-shot visual anomaly detection and localization with CLIP.

>>> import anoclip
>>> det = anoclip.Detector()                      # ViT-B-16-plus-240, laion400m_e32
>>> preds = det.predict(["a.png", "b.png"], "screw")
>>> preds[0].score, preds[0].anomaly_map.shape

Importing the package is cheap: the model stack (torch, open_clip) loads on first use of a
name that needs it, so ``anoclip --help`` answers at once.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS = {
    "AnoclipError": "errors",
    "AnoclipWarning": "errors",
    "BackboneError": "errors",
    "ImageDecodeError": "errors",
    "UsageError": "errors",
    "WeightsUnavailableError": "errors",
    "Runtime": "settings",
    "Settings": "settings",
    "Failure": "records",
    "Prediction": "records",
    "Backbone": "clip.backbone",
    "load_backbone": "clip.backbone",
    "Detector": "detector",
    "Threshold": "threshold",
    "decide_all": "decide.decisions",
}

__all__ = [
    "AnoclipError",
    "AnoclipWarning",
    "Backbone",
    "BackboneError",
    "Detector",
    "Failure",
    "ImageDecodeError",
    "Prediction",
    "Runtime",
    "Settings",
    "Threshold",
    "UsageError",
    "WeightsUnavailableError",
    "__version__",
    "decide_all",
    "load_backbone",
]

if TYPE_CHECKING:
    from anoclip.clip.backbone import Backbone, load_backbone
    from anoclip.decide.decisions import decide_all
    from anoclip.detector import Detector
    from anoclip.errors import (
        AnoclipError,
        AnoclipWarning,
        BackboneError,
        ImageDecodeError,
        UsageError,
        WeightsUnavailableError,
    )
    from anoclip.records import Failure, Prediction
    from anoclip.settings import Runtime, Settings
    from anoclip.threshold import Threshold


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata is slow to import: on first use only
        from importlib.metadata import PackageNotFoundError, version

        try:
            globals()[name] = version("anoclip")
        except PackageNotFoundError:  # a source tree that is not installed
            globals()[name] = "0+unknown"
        return globals()[name]
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'anoclip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
