"""Reading tensor files (checkpoints, banks) without running code from them.

``torch.load(weights_only=True)`` refuses anything but tensors and plain containers, which
is what makes a file from elsewhere safe to read. When it fails, torch's message advises
re-running with ``weights_only=False`` — that is, letting the file run arbitrary code.
anoclip never passes that on: :func:`load_tensors` says in one line why the file is not a
PyTorch tensor file (empty, not a zip archive nor a pickle, damaged, or holding Python
objects other than tensors).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_MAGIC = b"\x80"  # a pickle (protocol 2+): the legacy torch.save format


class TensorFileError(ValueError):
    """A file that :func:`load_tensors` cannot read; the message is the reason, one line."""


def load_tensors(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, or TensorFileError
    saying why `path` is not a PyTorch tensor file (never torch's unsafe advice)."""
    try:
        with warnings.catch_warnings():  # a damaged pickle's odd protocol number
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types, with multi-line advice
        raise TensorFileError(unreadable_reason(path, exc)) from None


def unreadable_reason(path: str | os.PathLike, exc: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised `exc`, in one line, from the file's
    first bytes and the kind of failure."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        return f"cannot read it ({err.strerror or type(err).__name__})"
    message = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return (
            f"it holds Python objects other than tensors ({found.group(1)}); anoclip reads "
            "tensors only, so that no code in a file runs"
        )
    if not head:
        return "not a PyTorch file: it is empty (0 bytes)"
    if head.startswith(ZIP_MAGIC):
        if "central directory" in message:
            return "a zip archive, but truncated or damaged"
        return "a zip archive, but not one that torch.save writes"
    if head.startswith(PICKLE_MAGIC):
        detail = _clause(message.rpartition("WeightsUnpickler error:")[2] or message)
        return "not a PyTorch file: damaged or truncated pickle data" + (
            f" ({detail})" if detail else ""
        )
    return (
        "not a PyTorch file: neither a zip archive nor a pickle (it starts with bytes "
        f"{head[:4].hex(' ')})"
    )


def _clause(message: str) -> str:
    """The first clause of an error message ("" if it is torch's advice)."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = re.split(r"\.\s", first, maxsplit=1)[0].rstrip(".")
    return "" if "weights_only" in first or "trust" in first else first
