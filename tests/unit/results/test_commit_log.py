"""The commit log read before the model loads: what counts as an earlier result."""

from __future__ import annotations

import pytest

from anoclip.errors import ResultFolderError
from anoclip.results.commit_log import holds_results
from anoclip.results.writer import SCORE_COLUMNS, check_folder

HEADER = ",".join(SCORE_COLUMNS) + "\n"


def test_a_header_alone_is_no_result(tmp_path):
    assert not holds_results(tmp_path)
    (tmp_path / "scores.csv").write_text(HEADER)
    assert not holds_results(tmp_path)
    check_folder(tmp_path, resume=False, overwrite=False)  # not refused
    (tmp_path / "scores.csv").write_text(HEADER + "a.png,a,0.5,10,10,,,\n")
    assert holds_results(tmp_path)
    with pytest.raises(ResultFolderError, match="earlier results"):
        check_folder(tmp_path, resume=False, overwrite=False)
