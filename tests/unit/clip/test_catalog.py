"""--model / --pretrained checked without importing open_clip (or torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from anoclip.clip.catalog import check_model, check_pretrained, shipped_model_names
from anoclip.errors import BackboneError
from tests.conftest import REPO


def test_shipped_names_are_read_without_importing_open_clip():
    code = (
        "import sys\nfrom anoclip.clip.catalog import shipped_model_names\n"
        "print('ViT-B-16-plus-240' in shipped_model_names(), 'open_clip' in sys.modules, "
        "'torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.stdout.split() == ["True", "False", "False"], res.stderr


def test_model_names_and_config_files(tiny_config):
    assert check_model(str(tiny_config)) is True
    assert check_model("ViT-B-16-plus-240") is False
    with pytest.raises(BackboneError, match="unknown model 'ViT-B-16-plus-24'.*Did you mean"):
        check_model("ViT-B-16-plus-24")
    with pytest.raises(BackboneError, match="model config file not found"):
        check_model("/nowhere/model.json")
    assert check_model("mine", known=["mine"]) is False  # open_clip's live registry
    assert "ViT-B-16-plus-240" in shipped_model_names()


def test_weights(tiny_config):
    assert check_pretrained("none", config=True) == "none"
    assert check_pretrained(None, config=False) == "none"
    assert check_pretrained(str(tiny_config), config=True) == "file"
    assert check_pretrained("laion400m_e32", config=False) == "tag"
    with pytest.raises(BackboneError, match="checkpoint file not found: /nowhere/w.pt"):
        check_pretrained("/nowhere/w.pt", config=False)
    with pytest.raises(BackboneError, match="needs an open_clip model name"):
        check_pretrained("laion400m_e32", config=True)
