"""Domain-aware contrastive state prompts (METHOD.md §2.3).

7 normal + 7 abnormal state phrases × 66 templates (three domain families of 22) give
462 sentences per state, built as ``template.format(state.format(name))`` with the
templates as the outer loop, exactly as the official code orders them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from anoclip.errors import UsageError
from anoclip.settings import ClassNames, Domain

STATE_NORMAL = (
    "normal {}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
STATE_ABNORMAL = (
    "damaged {}",
    "abnormal {}",
    "imperfect {}",
    "blemished {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

# The 22 template shapes; "{D}" is the domain phrase, "{A}" the article before it.
_SHAPES = (
    "a cropped {D} of the {}",
    "a cropped {D} of a {}",
    "a close-up {D} of a {}",
    "a close-up {D} of the {}",
    "a bright {D} of a {}",
    "a bright {D} of the {}",
    "a dark {D} of the {}",
    "a dark {D} of a {}",
    "a jpeg corrupted {D} of a {}",
    "a jpeg corrupted {D} of the {}",
    "a blurry {D} of the {}",
    "a blurry {D} of a {}",
    "{A} {D} of a {}",
    "{A} {D} of the {}",
    "{A} {D} of a small {}",
    "{A} {D} of the small {}",
    "{A} {D} of a large {}",
    "{A} {D} of the large {}",
    "{A} {D} of the {} for visual inspection",
    "{A} {D} of a {} for visual inspection",
    "{A} {D} of the {} for anomaly detection",
    "{A} {D} of a {} for anomaly detection",
)

OBJECT_DOMAINS = ("industrial photo", "industrial image", "manufacturing image")
TEXTURE_DOMAINS = ("industrial photo", "textural photo", "surface picture")
TEXTURES = frozenset({"carpet", "leather", "grid", "tile", "wood"})
# The official code's only renaming; everything else is used verbatim there.
ANOVL_NAME_MAP = {"macaroni1": "macaroni", "macaroni2": "macaroni"}


def family(domain: str) -> tuple[str, ...]:
    """The 22 templates of one domain phrase (e.g. ``"industrial photo"``)."""
    article = "an" if domain.startswith("industrial") else "a"
    return tuple(s.replace("{D}", domain).replace("{A}", article) for s in _SHAPES)


def templates(is_texture: bool) -> tuple[str, ...]:
    """The 66 templates for an object (or texture) class."""
    domains = TEXTURE_DOMAINS if is_texture else OBJECT_DOMAINS
    return tuple(t for d in domains for t in family(d))


def prompt_name(
    name: str, style: ClassNames = "clean", name_map: Mapping[str, str] | None = None
) -> str:
    """The object name as it appears in the sentences.

    "verbatim" keeps folder names as the official code does (only macaroni1/2 -> macaroni);
    "clean" also turns ``metal_nut`` into ``metal nut``. `name_map` overrides both.
    """
    raw = name.strip()
    if not raw:
        raise UsageError("the object name is empty")
    if name_map and raw in name_map:
        return name_map[raw]
    mapped = ANOVL_NAME_MAP.get(raw, raw)
    if style == "verbatim":
        return mapped
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", mapped)).strip()


def is_texture(name: str, domain: Domain = "auto") -> bool:
    """Texture routing: the 5 MVTec textures use the texture family under "auto"."""
    if domain != "auto":
        return domain == "texture"
    key = re.sub(r"[\s\-]+", "_", name.strip().lower())
    return key in TEXTURES


def sentences(name: str, texture: bool) -> tuple[list[str], list[str]]:
    """(normal, abnormal) sentence lists, 462 each, template-major order."""
    temps = templates(texture)
    normal = [t.format(s.format(name)) for t in temps for s in STATE_NORMAL]
    abnormal = [t.format(s.format(name)) for t in temps for s in STATE_ABNORMAL]
    return normal, abnormal
