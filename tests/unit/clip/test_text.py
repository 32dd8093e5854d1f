"""Text banks: prompts cut by the text context are reported."""

from __future__ import annotations

import warnings

import pytest

from anoclip.clip.prompts import sentences
from anoclip.clip.text import cut_prompts, warn_if_cut
from anoclip.errors import AnoclipWarning


def test_long_object_names_warn_with_counts(tiny_backbone):
    tok = tiny_backbone.tokenizer
    assert cut_prompts(tok, sentences("screw", False)[0]) == (0, 0)
    long_name = " ".join(["stainless"] * 80) + " bolt"
    normal, abnormal = sentences(long_name, False)
    full, identical = cut_prompts(tok, normal)
    assert full == 462 and 0 < identical < 462  # brute force below
    rows = [tuple(r) for r in tok(normal).tolist()]
    assert identical == len(rows) - len(set(rows))
    with pytest.warns(AnoclipWarning, match=r"924 prompts were cut, \d+ of them became identical"):
        warn_if_cut(tok, long_name, (normal, abnormal))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_cut(tok, "screw", sentences("screw", False))
