"""Drift statistics on two histograms over the same bins: an observed window against the reference profile.

Every function takes two count vectors (any non-negative numbers, usually integer counts) binned on the
same edges, as the device and the profile do (see core/profile.py): E + 1 ordered bins and a last NaN
column. The NaN column is a bin like the others, so a surge of NaN shows up as drift; for the ordered
statistic (KS) it sorts after every finite value.

    psi(obs, ref)          Population Stability Index, with a pseudo-count for empty bins
    js_distance(obs, ref)  Jensen-Shannon distance, base 2, in [0, 1]
    chi_square(obs, ref)   chi-square test of homogeneity on the 2 x B table -> (statistic, dof, p)
    ks_binned(obs, ref)    two-sample Kolmogorov-Smirnov on the bins -> (statistic, p)
    chi2_sf(x, dof)        the chi-square survival function (regularised upper incomplete gamma)
    kolmogorov_sf(x)       the survival function of the limiting Kolmogorov distribution
    merge(counts_list)     adds histograms of the same shape (device windows -> a fleet window)

numpy and math only: a device imports this module without scipy. The tests check every function
against scipy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

PSI_PSEUDO_COUNT = 0.5
_EPS = 1e-15  # relative tolerance of the incomplete gamma iterations
_TINY = 1e-300  # modified Lentz: stands in for an exact zero
_MAX_ITER = 100_000


def _pair(observed: Iterable[float], reference: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    obs = np.asarray(observed, dtype=np.float64).ravel()
    ref = np.asarray(reference, dtype=np.float64).ravel()
    if obs.shape != ref.shape:
        raise ValueError(f"observed and reference must have the same bins, got {obs.size} and {ref.size} counts")
    if not (np.isfinite(obs).all() and np.isfinite(ref).all()) or (obs < 0).any() or (ref < 0).any():
        raise ValueError("counts must be finite and non-negative")
    if obs.sum() <= 0 or ref.sum() <= 0:
        raise ValueError(f"both histograms need at least one count (observed {obs.sum():g}, reference {ref.sum():g})")
    return obs, ref


def merge(counts_list: Iterable[Iterable]) -> np.ndarray:
    """Sum of histograms of one shape (int64); a shape mismatch raises ValueError naming both shapes."""
    total: np.ndarray | None = None
    for counts in counts_list:
        array = np.asarray(counts, dtype=np.int64)
        if total is None:
            total = array.copy()
        elif array.shape != total.shape:
            raise ValueError(f"cannot merge histograms of shapes {total.shape} and {array.shape}")
        else:
            total += array
    if total is None:
        raise ValueError("nothing to merge")
    return total


def psi(observed: Iterable[float], reference: Iterable[float], *, pseudo_count: float = PSI_PSEUDO_COUNT) -> float:
    """Population Stability Index: sum over bins of (o - r) * ln(o / r), o and r the two proportions.

    Smoothing: bins empty on both sides are dropped (duplicate quantile edges, an unused NaN column);
    every remaining bin gets `pseudo_count` (default 0.5, the Jeffreys prior) added to both histograms
    before normalising, so a bin empty on one side gives a large but finite term that shrinks as that
    side's sample grows, rather than infinity or a term set by an arbitrary epsilon. The smoothing
    pulls small windows towards uniform and so lowers PSI by about 2 * B * pseudo_count / n of itself
    (about 10% for 100 samples in 10 bins, 1% for 1000), which errs on the side of fewer alerts. PSI is
    symmetric; to second order it equals chi_square's statistic / n_eff with
    n_eff = n * m / (n + m), so under no drift its expected value is about (B - 1) * (1/n + 1/m).
    """
    obs, ref = _pair(observed, reference)
    used = (obs > 0) | (ref > 0)
    o = obs[used] + pseudo_count
    r = ref[used] + pseudo_count
    o /= o.sum()
    r /= r.sum()
    return float(max(np.sum((o - r) * np.log(o / r)), 0.0))


def js_distance(observed: Iterable[float], reference: Iterable[float]) -> float:
    """Jensen-Shannon distance in base 2: sqrt of the JS divergence of the two proportions, in [0, 1].

    0 for identical proportions, 1 for disjoint supports; empty bins need no smoothing (0 * log 0 = 0).
    Equals scipy.spatial.distance.jensenshannon(p, q, base=2).
    """
    obs, ref = _pair(observed, reference)
    p, q = obs / obs.sum(), ref / ref.sum()
    m = 0.5 * (p + q)
    divergence = 0.5 * (_kl_terms(p, m) + _kl_terms(q, m)) / math.log(2.0)
    return float(math.sqrt(min(max(divergence, 0.0), 1.0)))


def _kl_terms(p: np.ndarray, m: np.ndarray) -> float:
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / m[nz])))


def chi_square(observed: Iterable[float], reference: Iterable[float]) -> tuple[float, int, float]:
    """Pearson's chi-square test of homogeneity on the 2 x B table [observed, reference].

    Columns empty on both sides are dropped, so dof = (non-empty columns) - 1. Returns (statistic, dof,
    p-value); with one non-empty column the table carries no information: (0.0, 0, 1.0). Equals
    scipy.stats.chi2_contingency([obs, ref], correction=False) on the table without its empty columns.
    """
    obs, ref = _pair(observed, reference)
    used = (obs > 0) | (ref > 0)
    table = np.stack([obs[used], ref[used]])
    dof = int(table.shape[1]) - 1
    if dof == 0:
        return 0.0, 0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, dof, chi2_sf(statistic, dof)


def chi2_sf(x: float, dof: float) -> float:
    """P(X > x) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof / 2, x / 2)."""
    if dof <= 0:
        raise ValueError(f"dof must be positive, got {dof}")
    if math.isnan(x):
        return math.nan
    if x <= 0:
        return 1.0
    return gammaincc(0.5 * dof, 0.5 * x)


def gammaincc(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a), for a > 0, x >= 0.

    Numerical Recipes' split: the power series of P = 1 - Q for x < a + 1 (where Q >= ~0.4, so the
    subtraction loses nothing), the continued fraction of Q (modified Lentz) beyond. The prefactor
    x^a e^-x / Gamma(a) is taken in logs, so a huge x gives a tiny Q or an exact 0.0, never a negative
    number or NaN.
    """
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        return max(0.0, 1.0 - _lower_series(a, x) * math.exp(log_prefactor))
    return min(1.0, _upper_fraction(a, x, log_prefactor))


def _lower_series(a: float, x: float) -> float:
    """sum_n x^n / (a (a+1) ... (a+n)); times the prefactor it is P(a, x)."""
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITER):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            return total
    raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")


def _upper_fraction(a: float, x: float, log_prefactor: float) -> float:
    """Q(a, x) by the continued fraction 1/(x+1-a- 1(1-a)/(x+3-a- 2(2-a)/(x+5-a- ...))), modified Lentz."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _TINY if abs(d) < _TINY else d
        c = b + an / c
        c = _TINY if abs(c) < _TINY else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            # exp(log_prefactor) alone may underflow while h is large: combine in logs
            return math.exp(log_prefactor + math.log(h))
    raise ArithmeticError(f"incomplete gamma continued fraction did not converge for a={a}, x={x}")


def ks_binned(observed: Iterable[float], reference: Iterable[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov on binned data -> (statistic, p-value).

    The statistic is the largest |CDF difference| over the bin boundaries, exactly what
    scipy.stats.ks_2samp gives on the samples expanded to their bin indices (the NaN column sorts last).
    The p-value is the asymptotic Kolmogorov distribution at sqrt(n_eff) * D with n_eff = n m / (n + m).
    It is approximate: binning merges every value of a bin into one tie, which can only hide a CDF
    difference inside a bin, never create one, and the continuous-case null distribution is
    conservative for tied (discrete) data; so the p-value is too large rather than too small when the
    samples are big enough for the asymptotic law (n_eff of a few dozen or more).
    """
    obs, ref = _pair(observed, reference)
    n, m = obs.sum(), ref.sum()
    cdf_obs = np.cumsum(obs) / n
    cdf_ref = np.cumsum(ref) / m
    statistic = float(np.max(np.abs(cdf_obs - cdf_ref)))
    n_eff = n * m / (n + m)
    return statistic, kolmogorov_sf(math.sqrt(n_eff) * statistic)


def kolmogorov_sf(x: float) -> float:
    """P(K > x) for the limiting Kolmogorov distribution (scipy.stats.kstwobign.sf).

    x >= 1: the alternating series 2 sum_j (-1)^(j-1) exp(-2 j^2 x^2), which converges fast there.
    x < 1: one minus the Jacobi theta form sqrt(2 pi)/x sum_j exp(-(2j-1)^2 pi^2 / (8 x^2)), which
    converges fast for small x and keeps the result accurate where it is close to 1.
    """
    if math.isnan(x):
        return math.nan
    if x <= 0:
        return 1.0
    if x < 1.0:
        t = -(math.pi**2) / (8.0 * x * x)
        total = 0.0
        for j in range(1, 50):
            term = math.exp((2 * j - 1) ** 2 * t)
            total += term
            if term < 1e-17 * total:
                break
        return min(1.0, max(0.0, 1.0 - math.sqrt(2.0 * math.pi) / x * total))
    total = 0.0
    for j in range(1, 100):
        term = math.exp(-2.0 * j * j * x * x)
        total += term if j % 2 else -term
        if term < 1e-17 * abs(total) or term == 0.0:
            break
    return min(1.0, max(0.0, 2.0 * total))
