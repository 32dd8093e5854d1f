"""Backbone loading: names, config files, checkpoints, and failing fast offline."""

from __future__ import annotations

import time

import pytest
import torch

from anoclip import BackboneError, WeightsUnavailableError, load_backbone

from ..conftest import TINY_SEED0, need


def test_offline_pretrained_tag_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touches the network
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        load_backbone("ViT-B-16-plus-240", "laion400m_e32", device="cpu", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "--pretrained" in msg and "checkpoint" in msg and "\n" not in msg
    # open_clip maps e32 to the e31 hub repo; we name the e32 release file instead
    assert "laion400m_e32-699c4b84" in msg


def test_unreachable_host_fails_fast(tmp_path, monkeypatch):
    from anoclip import backbone

    monkeypatch.setattr(backbone, "_reachable", lambda host, port=443: False)
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        load_backbone("ViT-B-32", "openai", device="cpu", cache_dir=str(tmp_path))


def test_unknown_model_and_tag(tiny_config):
    with pytest.raises(BackboneError, match="unknown model 'ViT-B-16-plus-24'.*Did you mean"):
        load_backbone("ViT-B-16-plus-24", "none")
    with pytest.raises(BackboneError, match="unknown pretrained tag"):
        load_backbone("ViT-B-16-plus-240", "laion9000")
    with pytest.raises(BackboneError, match="checkpoint file not found"):
        load_backbone(str(tiny_config), "/nowhere/weights.pt")
    with pytest.raises(BackboneError, match="needs an open_clip model name"):
        load_backbone(str(tiny_config), "laion400m_e32")


def test_random_weights_warn_loudly(tiny_config):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        bb = load_backbone(str(tiny_config), "none", device="cpu")
    assert bb.random_weights and bb.image_size == 240 and bb.depth == 12


def test_config_plus_checkpoint_loads_the_weights(tiny_config):
    bb = load_backbone(str(tiny_config), str(need(TINY_SEED0)), device="cpu")
    state = torch.load(TINY_SEED0, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    key = "visual.proj"
    assert torch.equal(bb.model.state_dict()[key], state[key])
    assert not bb.random_weights and bb.key.endswith("tiny-clip-12l-seed0.pt")
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_bad_checkpoint_is_one_line(tmp_path, tiny_config):
    bad = tmp_path / "bad.pt"
    torch.save({"nope": torch.zeros(1)}, bad)
    with pytest.raises(BackboneError, match="cannot load checkpoint"):
        load_backbone(str(tiny_config), str(bad))


def test_cuda_request_without_cuda(tiny_config):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(BackboneError, match="CUDA is not available"):
        load_backbone(str(tiny_config), "none", device="cuda")
