"""Serial dependence in the window tests: how much a lag-1 autocorrelation inflates their null spread.

The window tests of cloud/drift.py (chi-square, and the permutation test of cloud/drift_small_n.py)
assume the samples of a window, and of the reference, are independent. A series sampled in time rarely
is: quarterly US GDP growth has a lag-1 autocorrelation of 0.21 over 1960-1978, recessions come in runs
of bad quarters, and a window of 8 quarters holds fewer than 8 independent pieces of evidence. With the
iid level alpha = 0.01 its pre-1984 stretch, replayed one quarter per evaluation, was flagged 1.82 times
per 100 clean evaluations (benchmarks/bench_drift_detection.py): the test was anti-conservative, not
the series drifting.

The correction is the variance inflation of an AR(1) process with coefficient rho, the reference's lag-1
autocorrelation (in the profile's magnitude facts, core/magnitude.py), measured on the reference rows in
the order they were given: a series in time order shows its dependence; shuffled training rows give rho
near 0 and the iid test.
The mean of n consecutive samples has variance sigma^2 f(n) / n with

    f(n) = 1 + 2 sum_{k=1}^{n-1} (1 - k/n) rho^k

(Bartlett 1946; f -> (1 + rho) / (1 - rho) for large n), so the difference of a window's and the
reference's shares has variance inflated by

    F = (f(n) / n + f(m) / m) / (1 / n + 1 / m)

over what the iid tests assume. A chi-square statistic (a sum of squared standardised differences) is
then F times too large and a KS statistic sqrt(F) times: the tests compare statistic / F (and KS /
sqrt(F)) with their iid null, i.e. they judge n / F effective samples. rho is taken as max(0, rho):
negative dependence would make the iid test conservative, and it stays so (no test is made bolder than
iid). Lag-1 alone under-corrects a process with longer memory; the value's autocorrelation stands in for
each bin indicator's, which is weaker, so the correction errs on the safe side there.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _f(rho: float, n: int) -> float:
    """f(n) of the module docstring for an AR(1) with coefficient rho >= 0."""
    if rho <= 0 or n <= 1:
        return 1.0
    k = np.arange(1, n)
    return float(1.0 + 2.0 * np.sum((1.0 - k / n) * rho**k))


def inflation(facts: Mapping | None, n: int, m: int) -> float:
    """F of the module docstring for a window of n and a reference of m samples; 1.0 without facts or
    without a positive lag-1 autocorrelation (a profile written before it: the iid tests)."""
    rho = (facts or {}).get("lag1") or 0.0
    if rho <= 0 or n <= 0 or m <= 0:
        return 1.0
    rho = min(rho, 0.99)
    return (_f(rho, n) / n + _f(rho, m) / m) / (1.0 / n + 1.0 / m)
