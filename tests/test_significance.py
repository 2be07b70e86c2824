"""Accuracy with its uncertainty (significance.py): the exact interval and the exact McNemar test, checked against
values known in closed form or published."""

import math

import numpy as np
import pytest

from fmnist_seq.significance import binomial_cdf, clopper_pearson, mcnemar_exact


def test_clopper_pearson_matches_known_intervals():
    # R's binom.test(5, 10)$conf.int: 0.1870860 0.8129140
    assert clopper_pearson(5, 10) == pytest.approx((0.1870860, 0.8129140), abs=1e-7)
    # No success: the lower end is 0 and the upper one solves (1 - p)^n = 0.025, in closed form; all successes mirror it.
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)), abs=1e-12)
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0), abs=1e-12)
    # One success in n: the lower end solves 1 - (1 - p)^n = 0.025
    assert clopper_pearson(1, 20)[0] == pytest.approx(1 - 0.975 ** (1 / 20), abs=1e-12)
    # The test set's size, as scipy.stats.binomtest(9239, 10000).proportion_ci(method="exact") gives it: about
    # ±0.5 points around 92.39%, and not symmetric
    low, high = clopper_pearson(9239, 10000)
    assert (low, high) == pytest.approx((0.91853, 0.92902), abs=1e-5)
    assert 9239 / 10000 - low != pytest.approx(high - 9239 / 10000, abs=1e-6)


def test_the_interval_is_the_binomial_tails():
    low, high = clopper_pearson(37, 50)
    assert 1 - binomial_cdf(36, 50, low) == pytest.approx(0.025, abs=1e-9)  # P(X >= 37 | low)
    assert binomial_cdf(37, 50, high) == pytest.approx(0.025, abs=1e-9)  # P(X <= 37 | high)
    assert binomial_cdf(3, 6, 0.5) == pytest.approx(42 / 64)


def test_mcnemar_exact_matches_a_case_worked_by_hand():
    # 10 images where the models disagree, 1 for the first and 9 for the second: P(X <= 1) = 11/1024, p = 22/1024
    first = np.array([True] * 1 + [False] * 9 + [True] * 50)
    second = np.array([False] * 1 + [True] * 9 + [True] * 50)
    result = mcnemar_exact(first, second)
    assert (result.only_first, result.only_second) == (1, 9)
    assert result.p_value == 22 / 1024
    assert mcnemar_exact(second, first).p_value == 22 / 1024  # two-sided: the order does not matter


def test_mcnemar_exact_edge_cases():
    same = np.array([True, False, True])
    assert mcnemar_exact(same, same).p_value == 1.0  # no disagreement: no evidence either way
    assert mcnemar_exact(np.array([True] * 5), np.array([False] * 5)).p_value == 2 / 32
    # balanced disagreements cap at 1, not 2 * P(X <= 2) > 1
    assert mcnemar_exact(np.array([True, True, False, False]), np.array([False, False, True, True])).p_value == 1.0
    # many disagreements (as on 10,000 test images): exact, finite, and tiny for a lopsided split
    big = mcnemar_exact(np.array([True] * 310 + [False] * 177), np.array([False] * 310 + [True] * 177))
    assert 0 < big.p_value < 1e-8 and math.isfinite(big.p_value)
    with pytest.raises(ValueError, match="different images"):
        mcnemar_exact(np.array([True]), np.array([True, False]))
