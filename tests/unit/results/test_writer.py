"""What an interrupted run says about its results folder."""

from __future__ import annotations

from anoclip.results.writer import (
    SCORE_COLUMNS,
    SCORES,
    ResultWriter,
    interrupted_message,
    write_rows,
)


def test_interrupted_message_counts_what_finished(tmp_path):
    out = tmp_path / "out"
    assert "before any image finished" in interrupted_message(out)  # no folder yet
    ResultWriter(out).close()  # a set mode interrupted while encoding: the header only
    assert (out / SCORES).read_text().startswith("source,")
    msg = interrupted_message(out)
    assert msg == "anoclip: interrupted before any image finished; no results are kept"
    rows = [{c: "" for c in SCORE_COLUMNS} | {"source": f"{i}.png", "name": str(i)} for i in "ab"]
    write_rows(out / SCORES, rows)
    assert interrupted_message(out) == (
        f"anoclip: interrupted; 2 finished image(s) kept in {out} (--resume continues)"
    )
