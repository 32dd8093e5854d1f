"""The errors anoclip reports to its users.

Every user-facing error derives from :class:`AnoclipError` and carries a one-line message
that says what is wrong and what to do. The command line prints these (and ``OSError``) as
``anoclip: error: ...`` with exit code 2; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CLOSE_NAME_CUTOFF = 0.75  # difflib ratio: "vit_b_16" ~ "ViT-B-16", "ViT-Nope-99" ~ nothing


class AnoclipError(Exception):
    """Base class of every user-facing anoclip error (one-line message)."""


class UsageError(AnoclipError, ValueError):
    """Invalid arguments or settings (a bad value, an impossible combination)."""


class UnknownSettingError(UsageError, TypeError):
    """A setting name that does not exist (also a TypeError, like an unknown keyword)."""


class BackboneError(AnoclipError, ValueError):
    """A model name, config or checkpoint that cannot be used."""


class WeightsUnavailableError(AnoclipError, RuntimeError):
    """Pretrained weights are neither cached nor downloadable (offline)."""


class ImageDecodeError(AnoclipError, ValueError):
    """An input that cannot be turned into an RGB image; the message is the reason."""


class EvaluationError(AnoclipError, RuntimeError):
    """The evaluation cannot go on (e.g. an unreadable test image)."""


class ResultFolderError(AnoclipError):
    """An output folder that cannot be written, or whose results would be lost or mixed."""


class CalibrationError(AnoclipError, ValueError):
    """Thresholds cannot be estimated from the given scores (too few, not finite)."""


class ThresholdFileError(AnoclipError, ValueError):
    """A threshold file that is malformed, or that was made with other settings."""


class ReportError(AnoclipError, ValueError):
    """A report cannot be built from the given rows (missing map, mismatched sizes)."""


class AnoclipWarning(UserWarning):
    """Something the user should know (a fallback, a clipped prompt); the command line
    prints it as one ``anoclip: warning: ...`` line."""


class BankError(AnoclipError, ValueError):
    """A bank of normal features that cannot be read, written or used with these settings."""


def close_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to `n` names of `known` close to `name` (case aside), best first, for a "did you
    mean" hint; none when nothing is close (a hint to an unrelated name misleads)."""
    by_lower: dict[str, str] = {}
    for k in known:
        by_lower.setdefault(k.lower(), k)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=CLOSE_NAME_CUTOFF)
    return [by_lower[c] for c in close]
