"""Listing inputs and naming outputs: plain paths, no torch (the command line validates its
arguments with this before the model stack is imported).

anoclip never takes its own results for inputs. A *result folder* is the output folder
(``out``) or any folder holding an anoclip ``run.json``; the images anoclip writes there
live in its ``maps/`` and ``masks/`` subfolders. Scanning a folder skips the output folder
when it lies inside (it is anoclip's), and the ``maps/`` and ``masks/`` of every result
folder (``--out`` may be the image folder itself: its own images are still taken). An
input named explicitly inside the output folder, or inside a result folder's ``maps/`` or
``masks/``, is refused.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anoclip.errors import AnoclipWarning, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
RUN_INFO = "run.json"  # what anoclip writes in every result folder (anoclip.results.writer)
RESULT_SUBFOLDERS = ("maps", "masks")  # where a result folder holds anoclip's images
_RUN_INFO_MAX_BYTES = 1 << 20


@dataclass
class Listing:
    """The inputs found, and what was left out of them.

    paths: image files, in order, each file once; skipped: folders of anoclip results that
    held image files and were not scanned; duplicates: inputs dropped because the same file
    was already listed (named twice, or named and also found in a given folder).
    """

    paths: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    duplicates: list[Path] = field(default_factory=list)

    def notices(self) -> list[str]:
        """One line per kind of thing left out (for an :class:`AnoclipWarning`)."""
        out = []
        if self.skipped:
            shown = ", ".join(str(p) for p in self.skipped[:3])
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            out.append(
                f"not scanning {len(self.skipped)} folder(s) of anoclip's own results "
                f"({shown}{more}): its maps and masks are outputs, not inputs"
            )
        if self.duplicates:
            out.append(
                f"{len(self.duplicates)} duplicate input(s) dropped (e.g. {self.duplicates[0]}: "
                "the same file named twice, or also found in a given folder); each file is "
                "scored once"
            )
        return out


def expand_inputs(
    items: Iterable[str | os.PathLike], out: str | os.PathLike | None = None
) -> list[Path]:
    """:func:`list_inputs`' paths; what it left out is reported as one
    :class:`AnoclipWarning` per kind (anoclip results skipped, duplicates dropped)."""
    listing = list_inputs(items, out)
    for line in listing.notices():  # from this line, so a repeated listing warns once
        warnings.warn(line, AnoclipWarning, stacklevel=1)
    return listing.paths


def list_inputs(
    items: Iterable[str | os.PathLike], out: str | os.PathLike | None = None
) -> Listing:
    """Image files: files as given, folders scanned recursively (sorted), each file once.

    Inside folders only files with an image suffix are taken; files named explicitly are
    always taken (and reported if they cannot be decoded). `out`: the output folder of this
    run (see the module docstring for what is skipped and refused). Raises InputError for
    a path that does not exist, UsageError for an input inside anoclip's results.
    """
    out_dir = _resolved(out) if out is not None else None
    listing, seen = Listing(), set()
    for item in items:
        path = Path(item)
        if not path.exists():
            raise InputError(f"no such file or folder: {path}")
        _refuse_results(path, out_dir)
        found = _scan(path, out_dir, listing.skipped) if path.is_dir() else [path]
        for p in found:
            key = _resolved(p)
            if key in seen:
                listing.duplicates.append(p)
                continue
            seen.add(key)
            listing.paths.append(p)
    return listing


def _scan(root: Path, out_dir: Path | None, skipped: list[Path]) -> list[Path]:
    """Image files under `root`, sorted; result folders' images left out (into `skipped`)."""
    found = []
    for here, dirs, files in os.walk(root):
        folder = Path(here)
        is_out = out_dir is not None and _resolved(folder) == out_dir
        if is_out and folder != root:
            dirs[:] = []
            _note_skipped(folder, skipped)
            continue
        if is_out or is_anoclip_run(folder / RUN_INFO):
            for name in [d for d in dirs if d in RESULT_SUBFOLDERS]:
                dirs.remove(name)
                _note_skipped(folder / name, skipped)
        found += [
            folder / f
            for f in files
            if Path(f).suffix.lower() in IMAGE_SUFFIXES and (folder / f).is_file()
        ]
    return sorted(found)


def _note_skipped(folder: Path, skipped: list[Path]) -> None:
    """Record `folder` when it holds image files (an empty result folder is no news)."""
    for _, _, files in os.walk(folder):
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in files):
            skipped.append(folder)
            return


def _refuse_results(path: Path, out_dir: Path | None) -> None:
    """UsageError for an input inside the output folder or inside a result folder's maps/
    or masks/ (the output folder itself, or a folder holding it, may be scanned)."""
    full = _resolved(path)
    if out_dir is not None and out_dir in full.parents:
        raise UsageError(
            f"{path} is inside the output folder {out_dir}, where anoclip writes its results; "
            "give the original images, or choose another --out"
        )
    for sub in (full, *full.parents):
        if sub.name in RESULT_SUBFOLDERS and is_anoclip_run(sub.parent / RUN_INFO):
            raise UsageError(
                f"{path} is one of anoclip's own results (in {sub}, beside a run.json): "
                "give the original images"
            )


def is_anoclip_run(path: Path) -> bool:
    """Whether `path` is a run.json that anoclip wrote: a JSON object whose "anoclip" key
    is the version string and which holds the run's "fingerprint"
    (:func:`anoclip.cli.run_folder.run_header` writes both first)."""
    try:
        if not path.is_file() or path.stat().st_size > _RUN_INFO_MAX_BYTES:
            return False
        info = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and isinstance(info.get("anoclip"), str) and "fingerprint" in info


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).resolve()


def output_names(paths: Sequence[Path]) -> list[str]:
    """Short, unique, filesystem-safe names for output files, one per path.

    A file's stem when it is unique; a file whose stem other files share gets as few
    parent folders as tell it apart from them (``good__000``, ``crack__000``); the other
    files keep their plain stems. Paths whose names would still be equal (the same path
    twice, which :func:`list_inputs` never returns, or paths equal once made safe, such as
    ``a b.png`` and ``a_b.png``) get ``~2``, ``~3``... in order, the first keeping the
    plain name. The caller records the source -> name mapping (scores.csv's ``name``).
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
