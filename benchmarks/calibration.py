"""Simulated behaviour of the label-free image threshold (the table in calibrate.py).

For each score distribution and number of normals n, draw n normal scores, calibrate the
threshold t with `anoclip.decide.calibrate.image_threshold` (target false-reject rate α = 1 %,
confidence γ = 0.9), and compute the achieved false-reject rate exactly as 1 − F(t): the
limit of infinitely many fresh normals. Repeat 4,000 times per cell.

Run: .venv/bin/python benchmarks/calibration.py [--reps 4000] [--check-fresh]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from anoclip.decide.calibrate import order_statistic_rank, upper_quantile_bound

DISTRIBUTIONS = {
    "normal": stats.norm(),
    "gumbel": stats.gumbel_r(),
    "exponential": stats.expon(),
    "lognormal σ=0.5": stats.lognorm(0.5),
    "lognormal σ=1": stats.lognorm(1.0),
}
SIZES = (5, 20, 100, 300)
ALPHA, GAMMA = 0.01, 0.9


def simulate(dist, n: int, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    frr = np.empty(reps)
    est = ""
    for r in range(reps):
        t, est = upper_quantile_bound(dist.rvs(size=n, random_state=rng), ALPHA, GAMMA)
        frr[r] = dist.sf(t)
    return frr, est


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--check-fresh", action="store_true", help="also count fresh normals")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    first = next(n for n in range(2, 10_000) if order_statistic_rank(n, ALPHA, GAMMA))
    print(f"order statistic from n = {first}")
    print(f"{'distribution':16s}{'n':>4s}  {'estimator':16s}{'median FRR':>11s}{'mean FRR':>10s}"
          f"{'90th pct FRR':>14s}{'P(FRR > 1%)':>13s}")  # fmt: skip
    for name, dist in DISTRIBUTIONS.items():
        for n in SIZES:
            frr, est = simulate(dist, n, args.reps, rng)
            print(f"{name:16s}{n:4d}  {est:16s}{np.median(frr):11.4f}{frr.mean():10.4f}"
                  f"{np.quantile(frr, 0.9):14.4f}{np.mean(frr > ALPHA):13.3f}")  # fmt: skip
    if args.check_fresh:  # the exact 1 − F(t) against counting 100,000 fresh normals
        dist = stats.lognorm(0.5)
        t, _ = upper_quantile_bound(dist.rvs(size=20, random_state=rng), ALPHA, GAMMA)
        fresh = dist.rvs(size=100_000, random_state=rng)
        print(f"exact {dist.sf(t):.5f}  counted {np.mean(fresh > t):.5f}")


if __name__ == "__main__":
    main()
