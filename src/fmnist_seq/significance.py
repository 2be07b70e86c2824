"""Accuracy with its uncertainty: the exact (Clopper-Pearson) binomial interval of an accuracy, and the exact
McNemar test of two models on the same images. Exact computations in the standard library and numpy (no scipy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

CONFIDENCE = 0.95


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed from the log-probabilities (stable for n in the millions)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = np.arange(n + 1, dtype=np.float64)
    log_comb = np.array([0.0, *np.cumsum(np.log(n - i[:-1]) - np.log(i[1:]))])  # log C(n, i)
    log_pmf = log_comb + i * math.log(p) + (n - i) * math.log1p(-p)
    top = log_pmf.max()
    return float(min(1.0, np.exp(log_pmf[:k + 1] - top).sum() / np.exp(log_pmf - top).sum()))


def _bisect(f, target: float, increasing: bool) -> float:
    """The p in [0, 1] where the monotone f(p) crosses `target`, to float precision."""
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = (low + high) / 2
        if (f(mid) < target) == increasing:
            low = mid
        else:
            high = mid
        if high - low < 1e-15:
            break
    return (low + high) / 2


def clopper_pearson(successes: int, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact two-sided binomial interval: the p whose upper (lower) tail at `successes` is (1 - confidence)/2."""
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"{successes} successes in {trials} trials")
    alpha = (1 - confidence) / 2
    # lower: P(X >= k | p) = alpha, i.e. P(X <= k - 1 | p) = 1 - alpha, and that tail falls as p rises
    low = 0.0 if successes == 0 else _bisect(lambda p: binomial_cdf(successes - 1, trials, p), 1 - alpha, False)
    high = 1.0 if successes == trials else _bisect(lambda p: binomial_cdf(successes, trials, p), alpha, False)
    return low, high


@dataclass(frozen=True)
class McNemar:
    """Two models on the same images: b images only the first gets right, c only the second; exact p-value."""

    only_first: int
    only_second: int
    p_value: float


def mcnemar_exact(first_correct: np.ndarray, second_correct: np.ndarray) -> McNemar:
    """The exact (binomial) McNemar test: under "equally accurate", the b + c images where the models disagree
    split as Binomial(b + c, 1/2); the two-sided p-value is twice the smaller tail, at most 1. Computed with
    integers, so it is exact at any size."""
    first, second = np.asarray(first_correct, bool), np.asarray(second_correct, bool)
    if first.shape != second.shape:
        raise ValueError(f"the two models were scored on different images: {first.shape} and {second.shape}")
    b, c = int((first & ~second).sum()), int((~first & second).sum())
    n = b + c
    tail = Fraction(sum(math.comb(n, i) for i in range(min(b, c) + 1)), 2 ** n)
    return McNemar(b, c, float(min(Fraction(1), 2 * tail)))
