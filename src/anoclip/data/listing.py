"""Listing inputs and naming outputs: plain paths, no torch (the command line validates its
arguments with this before the model stack is imported)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from anoclip.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def expand_inputs(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths of image files: files as given, folders scanned recursively (sorted).

    Inside folders only files with an image suffix are taken; files named explicitly are
    always taken (and reported if they cannot be decoded).
    """
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise InputError(f"no such file or folder: {path}")
    return out


def output_names(paths: Sequence[Path]) -> list[str]:
    """Short, unique, filesystem-safe names for output files, one per path.

    A file's stem when it is unique; a file whose stem other files share gets as few
    parent folders as tell it apart from them (``good__000``, ``crack__000``); the other
    files keep their plain stems. A path given twice gets ``~2``, ``~3``... The caller
    records the source -> name mapping (scores.csv's ``name`` column).
    """
    parts = [tuple(_safe(x) for x in Path(p).with_suffix("").parts) for p in paths]
    groups: dict[str, list[int]] = {}
    for k, x in enumerate(parts):
        groups.setdefault(x[-1], []).append(k)
    names = [x[-1] for x in parts]
    for members in groups.values():
        distinct = {parts[k] for k in members}
        for k in members:
            others = distinct - {parts[k]}
            depth = next(
                d
                for d in range(1, len(parts[k]) + 1)
                if all(o[-d:] != parts[k][-d:] for o in others) or d == len(parts[k])
            )
            names[k] = "__".join(parts[k][-depth:])
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else f"{name}~{seen[name]}")
    return result


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part).lstrip(".") or "_"


class InputError(UsageError, FileNotFoundError):
    """An input path that does not exist."""
