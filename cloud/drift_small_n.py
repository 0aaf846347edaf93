"""Drift decisions on small samples: an exact-in-distribution (permutation) p-value on the binned counts.

Below EXACT_BELOW samples on either side (a window of a slow stream, judged because its fleet lowered
min_samples, or a reference profile of a short series) the large-sample rule of cloud/drift.py fails
both ways:

- the chi-square p-value is asymptotic, and with a few counts per bin it is wrong (expected counts
  under 5: Cochran's rule);
- the PSI threshold's noise term k (B - 1)(1/n + 1/m) explodes: 25 reference rows, 20 window rows and
  10 bins give 5 * 9 * 0.09 = 4.05, a PSI no shift reaches. A public series with a documented level
  shift (the Nile's flow, 1898, with 25 reference years) was never flagged.

So for a small signal the decision is

    drift  if  permutation p < alpha / G   and   PSI > psi_floor

The permutation test is the exact conditional test of homogeneity on the 2 x B table: under no drift the
n + m samples are exchangeable, so, given the pooled bin counts, the window's counts are one draw of n
samples without replacement from them (a multivariate hypergeometric draw). The p-value of a statistic
is (1 + #{draws whose statistic >= the observed one}) / (1 + PERMUTATIONS), with a fixed seed; the
statistic is chi-square's (any change of shape), and for ordered bins KS's too (a shift of location),
the smaller p-value doubled (Bonferroni). So a report is reproducible and its false-alarm rate is at
most alpha / G per signal whatever n and m (the draws are exact; only their number limits the
resolution, 1 / (1 + PERMUTATIONS); a p-value clearly above the level after a tenth of them stops
there). The noise term of PSI has no job left (the test controls false alarms), so only the floor
stays, as the effect size a drift must have to page anyone.
"""

from __future__ import annotations

import numpy as np

EXACT_BELOW = 100  # n or m below this: the permutation test decides (the default min_samples is 100)
PERMUTATIONS = 9999  # resolution 1e-4: enough for alpha 0.01 over up to 100 signals of a group
SEED = 14  # fixed: the same counts always get the same p-value


def is_small(n: int, m: int) -> bool:
    return n < EXACT_BELOW or m < EXACT_BELOW


def chi_square_statistics(window: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """Pearson's statistic of each 2 x B table [window row, pooled - window row]; window (..., B) counts,
    pooled (B,) with no empty bin."""
    n = window.sum(axis=-1, keepdims=True)
    total = pooled.sum()
    share = pooled / total
    expected_window = n * share
    expected_rest = (total - n) * share
    rest = pooled - window
    return np.sum((window - expected_window) ** 2 / expected_window + (rest - expected_rest) ** 2 / expected_rest,
                  axis=-1)


def ks_statistics(window: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """The two-sample KS statistic on ordered bins, max |F_window - F_rest|, of each window row."""
    n = window.sum(axis=-1, keepdims=True)
    rest = pooled - window
    return np.max(np.abs(np.cumsum(window, axis=-1) / n - np.cumsum(rest, axis=-1) / (pooled.sum() - n)), axis=-1)


def permutation_p(observed: np.ndarray, reference: np.ndarray, *, ordered: bool = False, alpha: float | None = None,
                  inflation: float = 1.0, permutations: int = PERMUTATIONS, seed: int = SEED) -> float:
    """The permutation p-value of [observed, reference] (integer counts): of the chi-square statistic, and
    for ordered bins also of the KS statistic (more powerful for a shift of location: the Nile's is seen
    3 years sooner), then min(p_chi2, p_ks) * 2 (Bonferroni over the two, so still at most the level).

    With `alpha`, the first tenth of the draws decides when it is clear: a p-value over 2 * alpha from
    them is returned as it is (the common clean case costs a tenth); otherwise all draws are made. The
    same seed makes the first draws the same, so the answer never depends on which way it went.

    `inflation` (F >= 1, cloud/drift_dependence.py): serially dependent samples spread the statistics
    wider than exchangeable ones, so the observed chi-square is compared as statistic / F and KS as
    statistic / sqrt(F) (n / F effective samples); 1.0 is the exact test."""
    obs = np.asarray(observed, dtype=np.int64)
    ref = np.asarray(reference, dtype=np.int64)
    used = (obs + ref) > 0
    obs, pooled = obs[used].astype(np.float64), (obs + ref)[used].astype(np.float64)
    if len(pooled) < 2:
        return 1.0  # one non-empty bin: the table says nothing
    tests = [chi_square_statistics] + ([ks_statistics] if ordered else [])
    scales = [inflation] + ([np.sqrt(inflation)] if ordered else [])
    observed_stats = [test(obs, pooled) * (1 - 1e-12) / scale  # ties count against drift
                      for test, scale in zip(tests, scales, strict=True)]
    rng = np.random.default_rng(seed)
    at_least, made = np.zeros(len(tests), np.int64), 0
    for size in (permutations // 10, permutations - permutations // 10):
        draws = rng.multivariate_hypergeometric(pooled.astype(np.int64), int(obs.sum()), size=size)
        null = [test(draws.astype(np.float64), pooled) for test in tests]
        at_least += [int(np.count_nonzero(values >= value)) for values, value in zip(null, observed_stats, strict=True)]
        made += size
        p = min(1.0, len(tests) * (1 + int(at_least.min())) / (1 + made))
        if alpha is not None and p > 2 * alpha:
            break
    return p
