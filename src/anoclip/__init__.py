"""anoclip: zero-shot visual anomaly detection and localization with CLIP.

>>> import anoclip
>>> det = anoclip.Detector()                      # ViT-B-16-plus-240, laion400m_e32
>>> preds = det.predict(["a.png", "b.png"], "screw")
>>> preds[0].score, preds[0].anomaly_map.shape
"""

__version__ = "0.1.0"

from .backbone import (  # noqa: E402
    Backbone,
    BackboneError,
    WeightsUnavailableError,
    load_backbone,
)
from .detector import Detector, Failure, Prediction  # noqa: E402
from .images import ImageDecodeError  # noqa: E402
from .settings import Settings  # noqa: E402

__all__ = [
    "Backbone",
    "BackboneError",
    "Detector",
    "Failure",
    "ImageDecodeError",
    "Prediction",
    "Settings",
    "WeightsUnavailableError",
    "__version__",
    "load_backbone",
]
