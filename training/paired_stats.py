"""Paired per-image statistics for comparing two methods scored on the same test images.

Two runs (``a`` and ``b``) of one (teacher set, seed) cell classify the same test images; per image the paired
difference is ``correct_a - correct_b``, one of -1, 0 or +1. Everything here works on those differences:

- :func:`discordant` counts the images only ``a`` got right (``a_only``) and only ``b`` got right (``b_only``);
- :func:`mcnemar_exact` tests ``a_only`` against ``b_only`` with the exact two-sided binomial test (McNemar's
  test without the normal approximation);
- :func:`hierarchical_bootstrap` gives the mean gain over all cells with a percentile interval, resampling
  teacher sets, then seeds within each drawn set, then images within each drawn cell.

Images are resampled through their counts: drawing ``n`` images with replacement from a cell with ``a_only``,
``b_only`` and ``n - a_only - b_only`` ties leaves a multinomial count of each kind, and the cell's gain is
``(draws of a_only - draws of b_only) / n``. That is the same distribution as resampling the images one by one,
at the cost of one multinomial draw per cell.
"""
from __future__ import annotations

from math import comb
from typing import Mapping, NamedTuple, Sequence, Tuple

import numpy as np

__all__ = ['Discordant', 'discordant', 'mcnemar_exact', 'BootstrapResult', 'hierarchical_bootstrap',
           'sign_counts']


class Discordant(NamedTuple):
    """The paired outcome of two runs on ``n`` images: how many only ``a`` and only ``b`` classified right."""
    a_only: int
    b_only: int
    n: int

    @property
    def gain(self) -> float:
        """Accuracy of ``a`` minus accuracy of ``b`` (a fraction: 0.01 is one point)."""
        return (self.a_only - self.b_only) / self.n


def discordant(correct_a: np.ndarray, correct_b: np.ndarray) -> Discordant:
    """Count the discordant pairs of two boolean vectors of per-image correctness (same images, same order)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f'discordant: two vectors over the same images, got shapes {a.shape} and {b.shape}')
    return Discordant(int((a & ~b).sum()), int((b & ~a).sum()), len(a))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided p-value of McNemar's exact test: under no difference each discordant image is a fair coin, so
    ``p = min(1, 2 * P(X <= min(a_only, b_only)))`` with ``X ~ Binomial(a_only + b_only, 1/2)``; 1 with none."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(k + 1))  # exact integers: no underflow before the one division
    return min(1.0, 2 * tail / 2 ** n)


class BootstrapResult(NamedTuple):
    """The mean gain over every cell (equal weights) and its percentile interval."""
    mean: float
    low: float
    high: float
    replicates: np.ndarray

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def hierarchical_bootstrap(cells: Mapping[str, Sequence[Discordant]], replicates: int = 10_000, seed: int = 0,
                           interval: float = 0.95) -> BootstrapResult:
    """The mean paired gain over ``cells`` (``{teacher set: [one Discordant per seed]}``) with its bootstrap
    percentile interval, resampling teacher sets, seeds within each drawn set, and images within each drawn
    (set, seed) cell, all with replacement. A set may have fewer seeds than another (a control run on a subset).
    """
    sets = [list(v) for v in cells.values()]
    if not sets or any(not cells_of_set for cells_of_set in sets):
        raise ValueError('hierarchical_bootstrap: every teacher set needs at least one (seed) cell')
    rng = np.random.default_rng(seed)
    chosen_sets = rng.integers(0, len(sets), size=(replicates, len(sets)))
    totals, counts = np.zeros(replicates), np.zeros(replicates)
    for s, set_cells in enumerate(sets):
        n = np.array([c.n for c in set_cells])
        probs = np.array([[c.a_only / c.n, c.b_only / c.n] for c in set_cells])
        probs = np.column_stack([probs, np.clip(1 - probs.sum(1), 0, 1)])
        times = (chosen_sets == s).sum(1)  # how often each replicate drew set s
        for draw in range(1, len(sets) + 1):
            rows = np.flatnonzero(times >= draw)
            if rows.size == 0:
                break
            seeds = rng.integers(0, len(set_cells), size=(rows.size, len(set_cells)))
            draws = rng.multinomial(n[seeds], probs[seeds])  # (rows, seeds drawn, 3)
            gains = (draws[..., 0] - draws[..., 1]) / n[seeds]
            totals[rows] += gains.sum(1)
            counts[rows] += len(set_cells)
    means = totals / counts
    observed = float(np.mean([c.gain for set_cells in sets for c in set_cells]))
    tail = (1 - interval) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return BootstrapResult(observed, float(low), float(high), means)


def sign_counts(gains: Sequence[float]) -> Tuple[int, int, int]:
    """``(positive, zero, negative)`` among per-cell gains."""
    g = np.asarray(gains)
    return int((g > 0).sum()), int((g == 0).sum()), int((g < 0).sum())
