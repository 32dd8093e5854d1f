"""Benchmark: the unlabeled set rule across categories (issue 25, item 4), leave one
category out.

The set rule (anoclip/decide/unlabeled.py) decides a set from its own scores:
t_r = c + k_r·σ_L (review), t_d = c + 4·σ_L (defect), c a robust centre, σ_L the RMS
deviation below it. It was tuned on transistor alone (k_r = 1.75). Here, on the per-image
scores that `benchmarks/visible_defects.py --json FILE` saved (the new defaults' rows of
each set and set mode: real EfficientNet-Lite0 features, no labels used to score):

    centres   hsm     the half-sample mode (the rule now)
              shorth  the midpoint of the shortest interval holding half the scores
              kde     the mode of a Gaussian kernel density, Silverman's bandwidth
                      h = 0.9·min(sd, IQR/1.34)·n^(−1/5)
    k_r       1.00, 1.25, …, 3.00

Leave one category out: for each set, k_r (per centre) is the one that minimises the mean
over the OTHER sets of (escapes + good flagged); the fold prints what that k_r gives on the
held-out set, beside the rule now (hsm, 1.75). Screw is not here: its image-level numbers
mean nothing (brightness separates its classes) and visible_defects.py keeps no per-image
map maxima for a pixel-level study. Labels are only read to count escapes and flagged.

Run: .venv/bin/python benchmarks/decision_rule.py /tmp/vd_full.json [--modes "--normal" k=5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from anoclip.decide.unlabeled import half_sample_mode, left_spread

KS = tuple(np.round(np.arange(1.0, 3.01, 0.25), 2))
NOW = ("hsm", 1.75)


def shorth_mid(x: np.ndarray) -> float:
    """The midpoint of the shortest interval holding ⌈n/2⌉ of the sorted values."""
    x = np.sort(x)
    h = (x.size + 1) // 2
    widths = x[h - 1 :] - x[: x.size - h + 1]
    i = int(np.argmin(widths))
    return float(0.5 * (x[i] + x[i + h - 1]))


def kde_mode(x: np.ndarray, grid: int = 512) -> float:
    """The mode of a Gaussian KDE with Silverman's rule-of-thumb bandwidth."""
    sd = np.std(x, ddof=1)
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    h = 0.9 * min(sd, iqr / 1.34 if iqr > 0 else sd) * x.size ** (-0.2)
    if h <= 0:
        return float(np.median(x))
    t = np.linspace(x.min(), x.max(), grid)
    dens = np.exp(-0.5 * ((t[:, None] - x[None, :]) / h) ** 2).sum(1)
    return float(t[int(np.argmax(dens))])


CENTRES = {"hsm": half_sample_mode, "shorth": shorth_mid, "kde": kde_mode}


def rates(images: list[dict], centre: str, k: float) -> tuple[float, float]:
    """(escapes, good flagged) of the set rule with this centre and k_r."""
    x = np.array([im["score"] for im in images])
    bad = np.array([im["label"] == 1 for im in images])
    c = CENTRES[centre](x)
    t_r = c + k * left_spread(x, c)
    ok = x <= t_r
    return float(ok[bad].mean()) if bad.any() else 0.0, float((~ok[~bad]).mean())


def folds(rows: list[dict]) -> list[str]:
    """Markdown lines: one fold per held-out set and centre."""
    sets = {r["set"]: r["images"] for r in rows}
    table = {(s, c, k): rates(imgs, c, k) for s, imgs in sets.items() for c in CENTRES
             for k in KS}  # fmt: skip
    lines = []
    for held in sets:
        now = rates(sets[held], *NOW)
        for c in CENTRES:
            cost = {k: np.mean([sum(table[(s, c, k)]) for s in sets if s != held]) for k in KS}
            k = min(KS, key=lambda kk: (cost[kk], abs(kk - 1.75)))
            esc, flg = table[(held, c, k)]
            lines.append(f"| {held} | {c} | {k:.2f} | {esc:.1%} / {flg:.1%} "
                         f"| {now[0]:.1%} / {now[1]:.1%} |")  # fmt: skip
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", type=Path)
    p.add_argument(
        "--modes",
        nargs="+",
        default=["--normal", "k=5"],
        help="row modes, e.g. --modes=--normal k=5 (default both)",
    )
    args = p.parse_args()
    data = json.loads(args.json.read_text())
    print(f"CPU: {data.get('cpu', '?')}")
    for mode in args.modes:
        rows = [r for r in data["rows"] if r["mode"] == mode and r["choice"] == "new"
                and r["set"] != "screw" and r.get("images")]  # fmt: skip
        if len(rows) < 2:
            print(f"\n{mode}: fewer than two sets, no folds")
            continue
        print(f"\n### {mode}: leave one category out (escapes / good flagged)\n")
        print("| held-out set | centre | k_r chosen on the others | held-out | now (hsm, 1.75) |")
        print("|---|---|---|---|---|")
        print("\n".join(folds(rows)))


if __name__ == "__main__":
    main()
