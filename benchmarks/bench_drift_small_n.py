"""Small samples on a real series: the Nile's 1898 level shift judged with 25 reference years.

    python benchmarks/bench_drift_small_n.py [--replays 1000] [--out runs/drift_small_n.json]

The Nile's annual flow at Aswan, 1871-1970 (statsmodels.datasets.nile, in the wheel), drops at 1898/99
(Cobb 1978). The reference profile is the first 25 years (10 quantile bins, as `edgefleet import` bins a
tabular column); min_samples is lowered to 3, as a slow stream's fleet would set it.

- detection delay: years after the change arrive one by one into one growing window; the delay is the
  number of post-change years after which each rule first says drift: the project's rule (permutation
  test below 100 samples), the large-sample rule it replaced (asymptotic chi-square and the PSI noise
  term), and scipy's two-sample KS on the raw values at p < 0.01 (same windows).
- false alarms per 100 clean evaluations: windows resampled from the pre-change years against the first
  25, and every 10-, 15- and 20-year window of the later regime (1924-1970) against its own first 25
  years (1899-1923).
- cost of one evaluation of the one-signal window: the small path on a drifting and on a clean window
  (a clean one stops after a tenth of the draws), against the large path.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from report import emit  # noqa: E402 - benchmarks/report.py, beside this script
from scipy import stats as sps
from statsmodels.datasets import nile

from edgefleet.cloud.drift import DRIFT, DriftThresholds, WindowCounts, evaluate
from edgefleet.cloud.drift_small_n import EXACT_BELOW, PERMUTATIONS
from edgefleet.core import drift as stats
from edgefleet.core.profile import bin_counts, quantile_edges

RULE = DriftThresholds(min_samples=3)


def profile_of(reference: np.ndarray) -> dict:
    edges = quantile_edges(reference[:, None], 10)
    return {"count": len(reference), "bins": 10, "features": [{
        "input": "flow", "kind": "columns", "names": ["flow"], "edges": edges.tolist(),
        "counts": bin_counts(reference[:, None], edges).tolist()}]}


def window_counts(values: np.ndarray, profile: dict) -> np.ndarray:
    return bin_counts(values[:, None], np.asarray(profile["features"][0]["edges"]))


def project(values: np.ndarray, profile: dict) -> bool:
    counts = WindowCounts(samples=len(values), features={"flow": window_counts(values, profile)})
    return evaluate(counts, profile, RULE)["data_drift"]["verdict"] == DRIFT


def large_sample_rule(values: np.ndarray, profile: dict) -> bool:
    """The rule before small samples had their own: asymptotic p and PSI above the noise-aware threshold."""
    obs, ref = window_counts(values, profile)[0], np.asarray(profile["features"][0]["counts"][0])
    _, dof, p = stats.chi_square(obs, ref)
    threshold = RULE.psi_threshold(max(dof, 1), obs.sum(), ref.sum())
    return len(values) >= RULE.min_samples and p < RULE.alpha and stats.psi(obs, ref) > threshold


def ks(values: np.ndarray, reference: np.ndarray) -> bool:
    return bool(sps.ks_2samp(values, reference).pvalue < RULE.alpha)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replays", type=int, default=1000, help="resampled clean windows per size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    data = nile.load().data
    flow, years = data["volume"].to_numpy(np.float64), data["year"].to_numpy().astype(int)
    change = int(np.flatnonzero(years == 1899)[0])
    reference = flow[:25]
    profile = profile_of(reference)
    after = flow[change:]
    rules = {
        "project": lambda v: project(v, profile),
        "large_sample_rule": lambda v: large_sample_rule(v, profile),
        "scipy_ks_raw_values": lambda v: ks(v, reference),
    }
    delay = {name: next((k for k in range(RULE.min_samples, 41) if rule(after[:k])), None)
             for name, rule in rules.items()}

    rng = np.random.default_rng(0)
    later_profile, later_reference = profile_of(flow[change:change + 25]), flow[change:change + 25]
    rest = flow[change + 25:]
    clean: dict[str, dict] = {}
    for name, judge, judge_later in (
        ("project", lambda v: project(v, profile), lambda v: project(v, later_profile)),
        ("scipy_ks_raw_values", lambda v: ks(v, reference), lambda v: ks(v, later_reference)),
    ):
        replays = [judge(rng.choice(flow[:change], size)) for size in (10, 20) for _ in range(args.replays)]
        sliding = [judge_later(rest[s:s + size]) for size in (10, 15, 20) for s in range(len(rest) - size + 1)]
        flagged = replays + sliding
        clean[name] = {"evaluations": len(flagged), "false_alarms": int(sum(flagged)),
                       "per_100": round(100 * sum(flagged) / len(flagged), 3)}

    small = WindowCounts(samples=20, features={"flow": window_counts(after[:20], profile)})
    calm = WindowCounts(samples=20, features={"flow": window_counts(flow[8:28], profile)})  # pre-change years
    big_profile = profile_of(np.repeat(reference, 8))
    big = WindowCounts(samples=120, features={"flow": window_counts(np.repeat(after[:20], 6), big_profile)})
    cost = {}
    for label, counts, prof in (("small_path_drifting_ms", small, profile), ("small_path_clean_ms", calm, profile),
                                ("large_path_ms", big, big_profile)):
        runs = []
        for _ in range(30):
            t = time.perf_counter()
            evaluate(counts, prof, RULE)
            runs.append((time.perf_counter() - t) * 1e3)
        cost[label] = round(float(np.median(runs)), 3)

    emit({
        "benchmark": "drift_small_n",
        "series": "Nile flow 1871-1970 (statsmodels.datasets.nile), level shift at 1898/99",
        "reference": "1871-1895 (25 years), 10 quantile bins",
        "thresholds": RULE.to_dict(), "exact_below": EXACT_BELOW, "permutations": PERMUTATIONS,
        "detection_delay_years_after_change": delay,
        "false_alarms_clean": clean,
        "evaluation_cost_one_signal": cost,
        "seconds": round(time.perf_counter() - started, 1),
    }, args.out)


if __name__ == "__main__":
    main()
