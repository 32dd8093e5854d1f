"""Engine: the Detector's calling convention on an exported file."""

from __future__ import annotations

import inspect

import pytest

from anoclip.deploy.engine import Engine
from anoclip.detector import Detector
from anoclip.errors import UsageError


def test_calibrate_has_the_detectors_parameters():
    """One calling convention: the command line calls both the same way."""

    def params(method):
        return [(p.name, p.kind) for p in inspect.signature(method).parameters.values()]

    assert params(Engine.calibrate) == params(Detector.calibrate)


@pytest.mark.parametrize("given", [{"bank": object()}, {"normals_are_bank": True}])
def test_calibrate_refuses_a_bank(given):
    engine = Engine.__new__(Engine)  # the refusal comes before the file is used
    with pytest.raises(UsageError, match="no visual branch"):
        engine.calibrate(["a.png", "b.png"], "screw", **given)
