"""Prompt ensemble: counts, wording, routing and class names (METHOD.md §2.3)."""

from __future__ import annotations

import pytest

from anoclip.clip.prompts import (
    STATE_ABNORMAL,
    STATE_NORMAL,
    family,
    is_texture,
    prompt_name,
    sentences,
    templates,
)


@pytest.mark.parametrize("texture", [False, True])
def test_462_sentences_per_state(texture):
    normal, abnormal = sentences("screw", texture)
    assert len(normal) == len(abnormal) == 462
    assert len(set(normal)) == len(set(abnormal)) == 462
    assert not any(s.endswith(".") for s in normal + abnormal)


def test_state_phrases_and_order():
    assert len(STATE_NORMAL) == len(STATE_ABNORMAL) == 7
    normal, abnormal = sentences("screw", False)
    # template-major: the first 7 sentences share the first template
    assert normal[:7] == [
        f"a cropped industrial photo of the {s.format('screw')}" for s in STATE_NORMAL
    ]
    assert abnormal[0] == "a cropped industrial photo of the damaged screw"
    assert "an industrial image of a screw with defect for anomaly detection" in abnormal
    assert "a manufacturing image of the large perfect screw" in normal


def test_articles_and_families():
    assert family("industrial photo")[12] == "an industrial photo of a {}"
    assert family("surface picture")[12] == "a surface picture of a {}"
    for d in ("industrial photo", "industrial image", "manufacturing image", "textural photo"):
        assert len(family(d)) == 22
    assert not any("surface photo" in t for t in templates(True))


@pytest.mark.parametrize("name", ["carpet", "leather", "grid", "tile", "wood"])
def test_texture_routing(name):
    assert is_texture(name)
    temps = templates(is_texture(name))
    assert sum("textural photo" in t for t in temps) == 22
    assert sum("surface picture" in t for t in temps) == 22
    assert sum("industrial photo" in t for t in temps) == 22


@pytest.mark.parametrize("name", ["screw", "metal_nut", "pcb1", "transistor"])
def test_object_routing(name):
    assert not is_texture(name)
    temps = templates(False)
    assert sum("manufacturing image" in t for t in temps) == 22
    assert not any("textural" in t for t in temps)


def test_domain_override():
    assert is_texture("fabric", "texture") and not is_texture("wood", "object")


def test_class_names():
    assert prompt_name("metal_nut") == "metal nut"
    assert prompt_name("metal_nut", "verbatim") == "metal_nut"
    assert prompt_name("macaroni1", "verbatim") == "macaroni"
    assert prompt_name("pipe_fryum") == "pipe fryum"
    assert prompt_name("pcb1", "verbatim") == "pcb1"
    assert (
        prompt_name("pcb1", "clean", {"pcb1": "printed circuit board"}) == "printed circuit board"
    )
    with pytest.raises(ValueError):
        prompt_name("  ")


def test_text_bank_shapes_and_normalisation(tiny_backbone):
    from anoclip.clip.text import build_text_bank

    bank = build_text_bank(tiny_backbone, "metal nut", False)
    assert bank.features.shape == (64, 2)
    assert bank.sentences.shape == (924, 64)
    assert bank.features.norm(dim=0).sub(1).abs().max() < 1e-5
    assert bank.sentences.norm(dim=1).sub(1).abs().max() < 1e-5


def test_trimmed_text_equals_full_context(tiny_backbone):
    from anoclip.clip.text import build_text_bank

    full = build_text_bank(tiny_backbone, "screw", False, text_tokens="full")
    trimmed = build_text_bank(tiny_backbone, "screw", False, text_tokens="trimmed")
    assert (full.features - trimmed.features).abs().max() < 1e-5
    assert (full.sentences - trimmed.sentences).abs().max() < 1e-5
