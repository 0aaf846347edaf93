"""The drift statistics against scipy, on random counts and on the edge cases telemetry produces."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from edgefleet.core import drift


def _random_pairs(count: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        bins = int(rng.integers(2, 40))
        p = rng.dirichlet(np.full(bins, rng.uniform(0.2, 5.0)))
        q = p if rng.random() < 0.3 else rng.dirichlet(np.full(bins, 1.0))
        obs = rng.multinomial(int(rng.integers(5, 5000)), p)
        ref = rng.multinomial(int(rng.integers(5, 50_000)), q)
        if rng.random() < 0.3:  # empty bins, on one side, the other, or both (duplicate edges, the NaN column)
            obs[rng.integers(0, bins, 2)] = 0
            ref[rng.integers(0, bins, 2)] = 0
        if obs.sum() and ref.sum():
            yield obs, ref


def _scipy_chi2(obs: np.ndarray, ref: np.ndarray) -> tuple[float, int, float]:
    table = np.stack([obs, ref])
    table = table[:, table.sum(axis=0) > 0]
    result = stats.chi2_contingency(table, correction=False)
    return result.statistic, result.dof, result.pvalue


def _expand(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def test_js_distance_matches_scipy():
    for obs, ref in _random_pairs():
        want = jensenshannon(obs / obs.sum(), ref / ref.sum(), base=2)
        assert drift.js_distance(obs, ref) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_chi_square_matches_scipy():
    for obs, ref in _random_pairs():
        statistic, dof, p = drift.chi_square(obs, ref)
        want_stat, want_dof, want_p = _scipy_chi2(obs, ref)
        assert dof == want_dof
        assert statistic == pytest.approx(want_stat, rel=1e-9, abs=1e-9)
        assert p == pytest.approx(want_p, rel=1e-9, abs=1e-300)


def test_ks_statistic_equals_ks_2samp_on_the_bin_indices():
    for obs, ref in _random_pairs(60, seed=1):
        statistic, p = drift.ks_binned(obs, ref)
        assert statistic == pytest.approx(stats.ks_2samp(_expand(obs), _expand(ref)).statistic, abs=1e-12)
        n, m = obs.sum(), ref.sum()
        assert p == pytest.approx(stats.kstwobign.sf(math.sqrt(n * m / (n + m)) * statistic), rel=1e-9, abs=1e-300)


def test_ks_p_value_is_conservative_against_scipy_exact_on_ties():
    # binning makes ties; the asymptotic continuous-case p-value is at least the exact one for these sizes
    rng = np.random.default_rng(3)
    for _ in range(30):
        obs = rng.multinomial(80, rng.dirichlet(np.ones(8)))
        ref = rng.multinomial(120, rng.dirichlet(np.ones(8)))
        _, p = drift.ks_binned(obs, ref)
        exact = stats.ks_2samp(_expand(obs), _expand(ref), method="exact").pvalue
        assert p >= exact * 0.9


def test_psi_is_the_symmetric_kl_divergence_of_the_smoothed_proportions():
    # PSI = sum (o - r) ln(o / r) = KL(o || r) + KL(r || o); scipy.stats.entropy(p, q) is KL(p || q)
    for obs, ref in _random_pairs():
        used = (obs > 0) | (ref > 0)
        o, r = obs[used] + 0.5, ref[used] + 0.5  # the documented smoothing: drop empty-empty, add 0.5
        want = stats.entropy(o, r) + stats.entropy(r, o)
        assert drift.psi(obs, ref) == pytest.approx(want, rel=1e-9, abs=1e-14)


def test_psi_without_empty_bins_is_close_to_the_unsmoothed_value_and_symmetric():
    obs, ref = np.array([400, 300, 200, 100]), np.array([250, 250, 250, 250])
    p, q = obs / obs.sum(), ref / ref.sum()
    raw = float(np.sum((p - q) * np.log(p / q)))
    assert drift.psi(obs, ref) == pytest.approx(raw, rel=1e-2)
    assert drift.psi(obs, ref) == pytest.approx(drift.psi(ref, obs), rel=1e-12)  # same totals: symmetric


def test_identical_distributions():
    counts = np.array([120, 80, 0, 45, 300, 0, 7])
    assert drift.psi(counts, counts) == pytest.approx(0.0, abs=1e-15)
    assert drift.psi(counts, 10 * counts) < 1e-3  # same proportions; only the smoothing differs
    assert drift.js_distance(counts, 10 * counts) == 0.0
    statistic, dof, p = drift.chi_square(counts, 10 * counts)
    assert statistic == pytest.approx(0.0, abs=1e-12) and dof == 4 and p == pytest.approx(1.0)
    ks_stat, ks_p = drift.ks_binned(counts, 10 * counts)
    assert ks_stat == pytest.approx(0.0, abs=1e-12) and ks_p == 1.0


def test_disjoint_supports():
    obs, ref = np.array([50, 50, 0, 0, 0]), np.array([0, 0, 0, 500, 500])
    assert drift.js_distance(obs, ref) == pytest.approx(1.0)
    assert drift.psi(obs, ref) > 5.0 and math.isfinite(drift.psi(obs, ref))
    statistic, dof, p = drift.chi_square(obs, ref)
    assert dof == 3 and p < 1e-50 and p == pytest.approx(_scipy_chi2(obs, ref)[2], rel=1e-9)
    assert drift.ks_binned(obs, ref)[0] == 1.0


def test_a_surge_of_nan_is_drift():
    reference = np.array([100, 100, 100, 100, 0])  # last column: NaN, never seen in the reference
    window = np.array([20, 20, 20, 20, 20])
    assert drift.chi_square(window, reference)[2] < 1e-10
    assert drift.psi(window, reference) > 0.5


def test_one_non_empty_column_carries_no_information():
    assert drift.chi_square([0, 10, 0], [0, 99, 0]) == (0.0, 0, 1.0)


def test_big_counts_give_tiny_p_values_without_underflow_to_garbage():
    obs = np.array([10**7, 2 * 10**7, 3 * 10**7])
    ref = np.array([3 * 10**7, 2 * 10**7, 10**7])
    statistic, dof, p = drift.chi_square(obs, ref)
    assert statistic == pytest.approx(_scipy_chi2(obs, ref)[0], rel=1e-9)
    assert p == 0.0  # far below the smallest double, like scipy
    obs, ref = np.array([53_000, 50_000, 47_000]), np.array([50_000, 50_000, 50_000])
    statistic, dof, p = drift.chi_square(obs, ref)
    want = _scipy_chi2(obs, ref)[2]
    assert 0.0 < p < 1e-20 and p == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 9, 10, 30, 99, 100, 257, 500, 999, 1000])
def test_chi2_sf_matches_scipy_across_dof(dof):
    xs = np.concatenate([np.linspace(1e-6, 4 * dof + 60, 300), [dof - 1.0, dof, dof + 1.0, dof + 2.0, 10 * dof + 500]])
    for x in xs[xs > 0]:
        want = stats.chi2.sf(x, dof)
        got = drift.chi2_sf(float(x), dof)
        assert got >= 0.0 and not math.isnan(got)
        if want > 1e-300:
            assert got == pytest.approx(want, rel=1e-9), (x, dof)
        else:
            assert got < 1e-290


def test_chi2_sf_far_tail_is_zero_not_negative():
    for dof in (1, 10, 1000):
        for x in (5e3, 1e5, 1e9, math.inf):
            assert drift.chi2_sf(x, dof) == 0.0
    assert drift.chi2_sf(0.0, 4) == 1.0


def test_kolmogorov_sf_matches_scipy():
    for x in np.linspace(0.01, 6.0, 600):
        assert drift.kolmogorov_sf(float(x)) == pytest.approx(stats.kstwobign.sf(x), rel=1e-9, abs=1e-300)


def test_merge_adds_counts_and_refuses_other_shapes():
    merged = drift.merge([[[1, 2, 0]], [[3, 4, 1]]])
    np.testing.assert_array_equal(merged, [[4, 6, 1]])
    with pytest.raises(ValueError, match=r"shapes \(1, 3\) and \(1, 4\)"):
        drift.merge([[[1, 2, 0]], [[3, 4, 1, 0]]])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same bins"):
        drift.psi([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one count"):
        drift.chi_square([0, 0], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        drift.js_distance([1, -1], [1, 2])


def test_core_drift_does_not_import_scipy():
    import subprocess
    import sys

    code = "import sys, edgefleet.core.drift; assert 'scipy' not in sys.modules, 'scipy was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
