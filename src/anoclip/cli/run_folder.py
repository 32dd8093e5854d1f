"""The --out folder of `anoclip detect`, checked before anything is written or loaded, and
the header of its run.json.

The folder itself is made only when scoring starts (:class:`~anoclip.results.writer.ResultWriter`,
or the Ray driver), so a run refused before then leaves no folder behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from anoclip import __version__
from anoclip.errors import ResultFolderError
from anoclip.results.commit_log import holds_results
from anoclip.settings import differing_fields

RUN_INFO = "run.json"


def check_output_folder(out: Path, resume: bool, overwrite: bool, finger: dict) -> None:
    """Refuse, before anything is written or loaded: a file in place of the folder, a
    folder that cannot be written, earlier results without --resume/--overwrite, and a
    resume whose settings fingerprint differs from the earlier run's."""
    if out.exists() and not out.is_dir():
        raise ResultFolderError(f"--out {out}: is an existing file, not a folder")
    _check_writable(out)
    has_results = holds_results(out)
    if has_results and not (resume or overwrite):
        raise ResultFolderError(
            f"--out {out} holds the results of an earlier run; pass --resume to continue it "
            "or --overwrite to replace it"
        )
    if resume and has_results:
        earlier = _earlier_fingerprint(out / RUN_INFO)
        changed = differing_fields(earlier, json.loads(json.dumps(finger)))
        if changed:
            raise ResultFolderError(
                f"--resume: {out} was made with different settings ({', '.join(changed)}); "
                "use the same settings, another --out, or --overwrite"
            )


def _check_writable(out: Path) -> None:
    """Write (then remove) a probe file in the folder. Folders made for the probe are
    removed again, deepest first: the run makes its folder when scoring starts."""
    made = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".anoclip-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ResultFolderError(f"--out {out}: cannot write there ({reason})") from None
    finally:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()


def _earlier_fingerprint(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ResultFolderError(
            f"--resume: {path} is missing or unreadable, so the earlier run's settings are "
            "unknown; use another --out or --overwrite"
        ) from None


def run_header(finger: dict) -> dict:
    """The first keys of every run.json: version, command line, result fingerprint."""
    return {"anoclip": __version__, "command": " ".join(sys.argv), "fingerprint": finger}
