"""Shared fixtures. Everything is offline: tiny random-weight models from ../shared."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_CONFIG = SHARED / "models" / "tiny-clip-12l.json"
TINY_SEED0 = SHARED / "models" / "tiny-clip-12l-seed0.pt"
GOLDEN = SHARED / "golden" / "anovl-tiny-golden.npz"
MVTEC = SHARED / "data" / "mvtec_ad"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    return need(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_backbone(tiny_config):
    """The tiny model with random weights (pretrained='none')."""
    from anoclip import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(str(tiny_config), "none", device="cpu")


@pytest.fixture(scope="session")
def seed0_backbone(tiny_config):
    """The tiny model with the seeded weights the golden arrays were computed with."""
    from anoclip import load_backbone

    return load_backbone(str(tiny_config), str(need(TINY_SEED0)), device="cpu")


@pytest.fixture(scope="session")
def golden():
    return dict(np.load(need(GOLDEN)))


@pytest.fixture(scope="session")
def mvtec() -> Path:
    return need(MVTEC)


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def tiny_cli(config: Path) -> list[str]:
    """CLI options for the tiny random-weight model."""
    return ["--model", str(config), "--pretrained", "none"]


def evaluate_two_categories(mvtec_root: Path, out: Path, *extra: str) -> list[str]:
    """`anoclip evaluate` arguments for the two shared MVTec categories."""
    return ["evaluate", "--dataset", "mvtec", "--root", str(mvtec_root), "--categories",
            "screw", "transistor", "--out", str(out), *extra]  # fmt: skip


@pytest.fixture(scope="session")
def textures():
    """benchmarks/textures.py, the procedural texture generator (it ships no images)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("textures", REPO / "benchmarks" / "textures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("textures", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module
