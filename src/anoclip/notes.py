"""What makes an image's score doubtful: the notes a scorer attaches, and the set-level rule
for the series screen's notes (torch-free: the CLI reads them without loading torch).

    unfamiliar       the image does not look like the known-good images (references/familiarity.py)
    near_identical   the set holds near-identical images of it (the same part shot again, a
                     series with one defect), skipped as its references where they would
                     dominate them (references/series.py)
    global_change    the whole image differs from what is normal (texture scale, contrast,
                     blur, another part): its global term raised its score
                     (references/global_score.py); its map stays patch-level

A set whose near-identical images make up at least UNTRUSTED_SHARE of it is not trusted:

    untrusted ⟺ #near_identical / N >= 0.5

(magnetic tile, every tile under several exposures: 96 % of images noted; MVTec AD transistor
test set: see benchmarks/series_defects.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

UNFAMILIAR = "unfamiliar"
NEAR_IDENTICAL = "near_identical"
GLOBAL_CHANGE = "global_change"
UNTRUSTED_SHARE = 0.5


def series_untrusted(count: int, total: int, bound: float = UNTRUSTED_SHARE) -> bool:
    """Whether `count` near-identical images of `total` make the set untrusted."""
    return total > 0 and count / total >= bound


def series_message(count: int, total: int, *, banked: bool = False) -> str:
    """The one-line warning for an untrusted set; `banked`: the set was scored with a bank of
    known-good images (``anoclip detect --normal DIR`` in a set mode), which the advice then
    does not ask for again."""
    advice = (
        "the known-good bank already backs every score; for scores independent of the set use "
        "--mode anoclip (each image against the known-good images alone)"
        if banked
        else "for scores to trust give known-good images as a bank (--normal DIR)"
    )
    return (
        f"{count} of {total} images ({count / max(total, 1):.0%}) have near-identical images in "
        "the set (the same part shot again, or a series with one defect), which can explain "
        "their defects away; they were skipped as references where they would dominate, but "
        f"{advice}"
    )


def series_summary(noted: Mapping[str, Sequence[str]], total: int) -> dict:
    """For run.json: the near-identical images among `total` scored, their share and the
    verdict (`noted`: source -> its notes)."""
    near = [s for s, n in noted.items() if NEAR_IDENTICAL in n]
    return {
        "untrusted": series_untrusted(len(near), total),
        "share": round(len(near) / total, 4) if total else 0.0,
        "bound": UNTRUSTED_SHARE,
        "images": near,
    }
