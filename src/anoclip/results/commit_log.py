"""The commit log of a result folder, ``OUT/scores.csv``, read without the model stack: the
command line checks an --out folder before torch loads (:mod:`anoclip.results.writer`
writes it: a header, then one row per finished image)."""

from __future__ import annotations

import csv
from pathlib import Path

SCORES = "scores.csv"


def holds_results(out: Path) -> bool:
    """Whether ``out/scores.csv`` lists a finished image. A header alone (a run stopped
    before its first image finished) is no earlier result."""
    path = out / SCORES
    if not path.is_file():
        return False
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        rows = csv.reader(f)
        next(rows, None)  # the header
        return any(row and row[0] for row in rows)
