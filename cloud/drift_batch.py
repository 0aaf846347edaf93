"""The window tests of many scopes at once: `evaluate_many(counts, profile, thresholds)` returns, for scopes
judged against one reference profile with one set of thresholds, the reports `drift.evaluate` returns one
by one. cloud/drift.py is the spec; this is its fast path for a monitor pass over a fleet
(tests/cloud/test_drift_batch.py holds the two together on random counts).

Per signal, the scopes' window rows are stacked into one (scopes x bins) array and PSI, Jensen-Shannon,
the chi-square statistic and the binned KS statistic are computed over it with numpy, a bin empty on both
sides masked out per row as `drift` drops it. The p-values are the same scalar functions
(core/drift.py: chi2_sf, kolmogorov_sf) called per row, so verdicts are the same; sums over masked rows
may differ from the scalar sums in the last bit.

What is left to the scalar path, row by row (`drift.judge_signal`): a signal with magnitude or dependence facts
(its location and variance inflation are per-signal numbers of their own), a small sample judged by the
permutation test (n or m under 100 with n >= min_samples), and a reference row that is not a histogram
(negative or non-finite counts: the scalar path raises as it always did).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from edgefleet.cloud import drift_magnitude as magnitude
from edgefleet.cloud import drift_small_n as small_n
from edgefleet.cloud.drift import (
    DRIFT,
    GROUPS,
    INSUFFICIENT,
    OK,
    DriftThresholds,
    WindowCounts,
    assemble,
    check_against_profile,
    group_report,
    judge_signal,
    signals_of,
)
from edgefleet.core import drift as stats


def evaluate_many(counts: Sequence[WindowCounts], profile: Mapping,
                  thresholds: DriftThresholds | None = None) -> list[dict]:
    """[drift.evaluate(c, profile, thresholds) for c in counts], computed per signal over all of them.
    Raises CountsMismatch if any of them does not fit the profile (check them one by one first to keep
    the others)."""
    thresholds = thresholds or DriftThresholds()
    if not counts:
        return []
    for item in counts:
        check_against_profile(item, profile)
    signals = signals_of(profile)
    sizes = {group: len({name for g, name, *_ in signals if g == group}) for group in GROUPS}
    results: dict[str, dict[str, list[dict]]] = {group: {} for group in GROUPS}
    for group, name, window, reference, ordered, facts in signals:
        alpha = thresholds.alpha / max(sizes[group], 1)
        rows = np.stack([np.asarray(window(item)) for item in counts])
        results[group][name] = _signals(rows, reference, ordered, alpha, thresholds, facts)
    reports, settings = [], thresholds.to_dict()
    for index, item in enumerate(counts):
        groups = {}
        for group, by_name in results.items():
            alpha = thresholds.alpha / max(sizes[group], 1)
            groups[group] = group_report({name: rows[index] for name, rows in by_name.items()}, alpha)
        reports.append(assemble(groups, item.samples, profile, dict(settings)))
    return reports


def _signals(obs: np.ndarray, ref: np.ndarray, ordered: bool, alpha: float, thresholds: DriftThresholds,
             facts: Mapping | None) -> list[dict]:
    """drift.judge_signal of each row of `obs` (scopes x bins) against `ref`."""
    reference = np.asarray(ref, dtype=np.float64).ravel()
    if (facts is not None or obs.ndim != 2 or obs.shape[1] != reference.size
            or not np.isfinite(reference).all() or (reference < 0).any() or (obs < 0).any()):
        return [judge_signal(row, ref, ordered, alpha, thresholds, facts) for row in obs]
    window = obs.astype(np.float64)
    n_all = obs.sum(axis=1)
    m = int(reference.sum())
    if m == 0:
        return [judge_signal(row, ref, ordered, alpha, thresholds, facts) for row in obs]
    usable = n_all > 0
    out: list[dict | None] = [None] * len(obs)
    for index in np.flatnonzero(~usable):
        out[index] = judge_signal(obs[index], ref, ordered, alpha, thresholds, facts)
    if usable.any():
        rows = np.flatnonzero(usable)
        n_list = n_all.tolist()
        values = {key: array.tolist() for key, array in _statistics(window[rows], reference, ordered).items()}
        for k, index in enumerate(rows):
            out[index] = _row(obs[index], ref, n_list[index], m, values, k, ordered, alpha, thresholds)
    return out  # type: ignore[return-value]


def _statistics(obs: np.ndarray, ref: np.ndarray, ordered: bool) -> dict[str, np.ndarray]:
    """PSI, JS distance, the chi-square statistic and dof, and the KS statistic of each row (n > 0, m > 0)."""
    n = obs.sum(axis=1, keepdims=True)
    m = ref.sum()
    used = (obs > 0) | (ref > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # PSI: bins empty on both sides dropped, the pseudo-count on the others
        o = np.where(used, obs + stats.PSI_PSEUDO_COUNT, 0.0)
        r = np.where(used, ref + stats.PSI_PSEUDO_COUNT, 0.0)
        o /= o.sum(axis=1, keepdims=True)
        r /= r.sum(axis=1, keepdims=True)
        psi = np.maximum(np.where(used, (o - r) * np.log(o / r), 0.0).sum(axis=1), 0.0)
        # Jensen-Shannon distance, base 2
        p, q = obs / n, ref / m
        mid = 0.5 * (p + q)
        kl_p = np.where(p > 0, p * np.log(p / mid), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log(q / mid), 0.0).sum(axis=1)
        js = np.sqrt(np.clip(0.5 * (kl_p + kl_q) / math.log(2.0), 0.0, 1.0))
        # chi-square on the 2 x B table of the used bins
        total = n + m
        columns = obs + ref
        expected_obs = n * columns / total
        expected_ref = m * columns / total
        terms = np.where(used, (obs - expected_obs) ** 2 / expected_obs + (ref - expected_ref) ** 2 / expected_ref,
                         0.0)
    dof = used.sum(axis=1) - 1
    statistic = np.where(dof > 0, terms.sum(axis=1), 0.0)
    values = {"psi": psi, "js": js, "chi2": statistic, "dof": dof}
    if ordered:
        values["ks"] = np.max(np.abs(np.cumsum(obs, axis=1) / n - np.cumsum(ref) / m), axis=1)
    return values


def _row(obs: np.ndarray, ref: np.ndarray, n: int, m: int, values: Mapping[str, list], k: int,
         ordered: bool, alpha: float, thresholds: DriftThresholds) -> dict:
    """drift.judge_signal's result for one row from the stacked statistics (no facts: no location, F = 1)."""
    small = small_n.is_small(n, m)
    if small and n >= thresholds.min_samples:
        return judge_signal(obs, ref, ordered, alpha, thresholds, None)  # the permutation test decides
    dof = values["dof"][k]
    statistic = values["chi2"][k]
    p = 1.0 if dof == 0 else stats.chi2_sf(statistic, dof)
    psi = values["psi"][k]
    psi_threshold = thresholds.psi_floor if small else thresholds.psi_threshold(max(dof, 1), n / 1.0, m / 1.0)
    ks = None
    if ordered:
        ks_stat = values["ks"][k]
        ks = {"statistic": ks_stat, "p": stats.kolmogorov_sf(math.sqrt(n * m / (n + m)) * ks_stat)}
    if n < thresholds.min_samples:
        verdict = INSUFFICIENT
    else:
        verdict = DRIFT if magnitude.decide(p < alpha, psi > psi_threshold, None) else OK
    return {
        "n": n, "m": m, "psi": psi, "psi_threshold": psi_threshold, "js": values["js"][k],
        "chi2": {"statistic": statistic, "dof": dof, "p": p, "exact_p": None, "inflation": 1.0},
        "ks": ks, "location": None, "verdict": verdict,
    }
