"""The errors anoclip reports to its users.

Every user-facing error derives from :class:`AnoclipError` and carries a one-line message
that says what is wrong and what to do. The command line prints these (and ``OSError``) as
``anoclip: error: ...`` with exit code 2; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations


class AnoclipError(Exception):
    """Base class of every user-facing anoclip error (one-line message)."""


class UsageError(AnoclipError, ValueError):
    """Invalid arguments or settings (a bad value, an impossible combination)."""


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
