"""What the `anoclip` command prints besides results: one-line errors and warnings.

Every warning is one ``anoclip: warning:`` line written above any progress bar; every user
error one ``anoclip: error:`` line (:func:`one_line` folds its message).
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from anoclip.errors import AnoclipWarning


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text


def warn(text: str) -> None:
    write_line(f"anoclip: warning: {text}")


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Every warning as one `anoclip: warning:` line (above any progress bar)."""
    text = " ".join(str(message).split())
    text = text.removeprefix("anoclip: ").removeprefix("warning: ")
    if not issubclass(category, (AnoclipWarning, UserWarning, DeprecationWarning)):
        text = f"{category.__name__}: {text}"
    write_line(f"anoclip: warning: {text}")


def write_line(text: str) -> None:
    tqdm.write(text, file=sys.stderr)
