"""Decisions on a stream: the unlabeled set rule of issue 19 made rolling.

    window W   the last `window` scored parts (every decision: the rule is built for a set
               with defects in it), oldest first, plus the part being decided
    bounds     c = half-sample mode, σ_L = spread below c, t_r = c + 1.75·σ_L,
               t_d = c + 4·σ_L (decide.unlabeled), and the same over the map maxima
               (the masks' pixel bounds)

A fixed threshold (calibrated on known-good images, or a threshold file) replaces the rule.
The window is rebuilt from the store at a restart, so decisions go on where they stopped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from anoclip.decide.calibrate import calibrate_unsupervised
from anoclip.threshold import Threshold

WINDOW = 200  # parts the rolling rule looks back on
WARMUP = 20  # parts answered pending before the first decision (benchmarks/inline.py)


class RollingRule:
    """The rolling set rule (module doc), or a `fixed` threshold; `settings` is the
    fingerprint each threshold records."""

    def __init__(
        self, window: int = WINDOW, fixed: Threshold | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.fixed, self.settings = fixed, dict(settings or {})
        self.scores: deque[float] = deque(maxlen=int(window))
        self.maxima: deque[float] = deque(maxlen=int(window))
        self.last: Threshold | None = fixed

    def seed(self, scored: Iterable[tuple[float, float]]) -> None:
        """Earlier parts' (score, map maximum), oldest first."""
        for score, top in scored:
            self.scores.append(float(score))
            self.maxima.append(float(top))

    def next(self, score: float, top: float) -> Threshold:
        """The threshold that decides a part scoring `score` with map maximum `top` (the
        part joins the window)."""
        self.seed([(score, top)])
        if self.fixed is not None:
            return self.fixed
        self.last = self.current()
        return self.last

    def current(self) -> Threshold:
        """The rule over the window as it is (at least 3 parts)."""
        maps = [np.array([[m]]) for m in self.maxima]
        found = calibrate_unsupervised(self.scores, maps, settings=self.settings)
        found.inputs["rolling_window"] = self.scores.maxlen
        return found
