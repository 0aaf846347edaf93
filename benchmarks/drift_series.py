"""Real series with documented change points, replayed a few samples at a time (bench_drift_detection.py).

Every series ships inside statsmodels (no download). For each, the reference profile is the first part of
the regime before the documented change (build_profile, as `edgefleet import` bins a tabular column); the
stream starts after it and brings one sample per evaluation. At every evaluation:

- project: the CUSUMs of cloud/drift_sequential.py (1-sd mean, large-move mean and spread, each threshold
  from the reference for the one-signal scope's per-statistic ARL0) fed the new window, or the window rule
  of cloud/drift.py (min_samples 3) on the last `lookback` samples saying drift on the feature (its tests
  judging n / F effective samples, F from the reference's lag-1 autocorrelation, cloud/drift_dependence.py;
  "reference_lag1" in each row);
- scipy: the two-sample KS test of the same last `lookback` samples against the reference, p < 0.01.

Delay: samples after the documented change until the first alarm, within the documented regime's
length (`horizon`; a later alarm is another event, so a miss). False alarms per 100 clean evaluations:
the pre-change part replayed alone, resampled in blocks of 4 (keeps short-range dependence) into
STREAMS streams of EVALUATIONS evaluations against the same reference; the literal clean stretch after
the reference is also replayed as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from statsmodels.datasets import elec_equip, macrodata, nile

from edgefleet.cloud.drift import DRIFT, DriftThresholds, WindowCounts, evaluate
from edgefleet.cloud.drift_magnitude import facts_of
from edgefleet.cloud.drift_sequential import Cusum, scope_arl0
from edgefleet.core.profile import bin_counts, build_profile
from edgefleet.core.schema import TensorSpec

RULE = DriftThresholds(min_samples=3)
ALPHA = 0.01
STREAMS, EVALUATIONS, BLOCK = 50, 100, 4


@dataclass(frozen=True)
class Series:
    name: str
    values: np.ndarray
    labels: list[str]
    reference_end: int  # reference = values[start:reference_end]
    change: int  # index of the first sample after the documented change
    start: int
    lookback: int
    horizon: int  # samples after the change the documented regime lasts: a later alarm is not a detection
    source: str


def load() -> list[Series]:
    flow = nile.load().data
    years = flow["year"].astype(int).astype(str).tolist()
    macro = macrodata.load_pandas().data
    quarters = [f"{int(y)}Q{int(q)}" for y, q in zip(macro["year"], macro["quarter"], strict=True)]
    growth = np.diff(np.log(macro["realgdp"].to_numpy())) * 400
    elec = elec_equip.load().data.iloc[:, 0]
    months = [d.strftime("%Y-%m") for d in elec.index]
    return [
        Series("nile", flow["volume"].to_numpy(np.float64), years, 25, years.index("1899"), 0, 5, 72,
               "Nile flow at Aswan 1871-1970 (statsmodels nile): level shift after 1898 (Cobb 1978)"),
        Series("us_real_interest_rate", macro["realint"].to_numpy(np.float64), quarters,
               quarters.index("1977Q4"), quarters.index("1980Q4"), quarters.index("1972Q4"), 5, 24,
               "US ex-post real interest rate (statsmodels macrodata realint): mean shift at 1980Q3/Q4, "
               "the Volcker regime (Garcia and Perron 1996; Bai and Perron 2003)"),
        Series("euro_electrical_equipment", elec.to_numpy(np.float64), months, months.index("2008-01"),
               months.index("2008-11"), months.index("2006-01"), 6, 24,
               "Euro area electrical equipment turnover index (statsmodels elec_equip): the collapse of "
               "late 2008, the financial crisis (Hyndman and Athanasopoulos, FPP, STL chapter)"),
        Series("us_gdp_growth_volatility", growth, quarters[1:], quarters.index("1979Q1") - 1,
               quarters.index("1984Q1") - 1, quarters.index("1960Q1") - 1, 8, 96,
               "US real GDP growth, annualised (statsmodels macrodata realgdp): its volatility halves "
               "from 1984Q1, the Great Moderation (McConnell and Perez-Quiros 2000; Kim and Nelson 1999)"),
    ]


class Judges:
    """The project's two detectors and scipy's KS on one reference."""

    def __init__(self, reference: np.ndarray, lookback: int) -> None:
        self.reference, self.lookback = reference, lookback
        self.profile = build_profile({"x": reference[:, None]}, [TensorSpec("x", "float64", ("batch", 1))], None)
        self.edges = np.asarray(self.profile["features"][0]["edges"])
        self.facts = facts_of(self.profile["features"][0], 0)
        fresh = self.fresh_cusum()
        self.threshold, self.spread_threshold, self.large_threshold = (fresh.threshold, fresh.spread_threshold,
                                                                       fresh.large_threshold)

    def fresh_cusum(self) -> Cusum:
        """Sums at 0 (the thresholds are calibrated once per process and reference)."""
        return Cusum.for_signal(self.facts, np.asarray(self.profile["features"][0]["counts"][0]), 1,
                                arl0=scope_arl0(1))  # as the monitor runs a one-signal scope

    def counts(self, values: np.ndarray) -> np.ndarray:
        return bin_counts(np.asarray(values, np.float64)[:, None], self.edges)

    def replay(self, stream: np.ndarray) -> list[dict]:
        """One verdict per sample of the stream: CUSUM, window rule, KS (False before 3 samples)."""
        cusum, out = self.fresh_cusum(), []
        for t in range(len(stream)):
            evidence = cusum.update(self.counts(stream[t:t + 1])[0])
            seq = evidence["alarm"]
            window = stream[max(0, t + 1 - self.lookback):t + 1]
            rule = ks = False
            if len(window) >= RULE.min_samples:
                report = evaluate(WindowCounts(samples=len(window), features={"x": self.counts(window)}),
                                  self.profile, RULE)
                rule = report["data_drift"]["verdict"] == DRIFT
                ks = bool(sps.ks_2samp(window, self.reference).pvalue < ALPHA)
            out.append({"cusum": seq, "spread": evidence["statistic"] == "spread", "rule": rule,
                        "project": seq or rule, "ks": ks})
        return out


def first(verdicts: list[dict], key: str, after: int, horizon: int) -> int | None:
    hits = [t - after + 1 for t, v in enumerate(verdicts) if after <= t < after + horizon and v[key]]
    return hits[0] if hits else None


def block_stream(pre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    starts = rng.integers(0, len(pre) - BLOCK + 1, EVALUATIONS // BLOCK + 1)
    return np.concatenate([pre[s:s + BLOCK] for s in starts])[:EVALUATIONS]


def measure(series: Series) -> dict:
    reference = series.values[series.start:series.reference_end]
    judges = Judges(reference, series.lookback)
    stream = series.values[series.reference_end:]
    verdicts = judges.replay(stream)
    after = series.change - series.reference_end
    delay = {key: first(verdicts, key, after, series.horizon) for key in ("project", "cusum", "spread", "rule", "ks")}
    literal = verdicts[:after]
    pre = series.values[series.start:series.change]
    rng = np.random.default_rng(0)
    clean = [v for _ in range(STREAMS) for v in judges.replay(block_stream(pre, rng))]
    keys = ("project", "cusum", "spread", "rule", "ks")
    rate = {key: round(100.0 * sum(v[key] for v in clean) / len(clean), 2) for key in keys}
    return {
        "series": series.name, "source": series.source,
        "reference": f"{series.labels[series.start]}..{series.labels[series.reference_end - 1]} "
                     f"({series.reference_end - series.start} samples)",
        "change_at": series.labels[series.change], "window_samples": 1, "lookback_samples": series.lookback,
        "horizon_samples": series.horizon,
        "reference_lag1": judges.facts.get("lag1"),
        "cusum_threshold": judges.threshold, "cusum_spread_threshold": judges.spread_threshold,
        "cusum_large_move_threshold": judges.large_threshold,
        "delay_samples_after_change": delay,
        "detected": {"project": delay["project"] is not None, "scipy_ks": delay["ks"] is not None},
        "project_faster_than_ks": (delay["project"] is not None
                                   and (delay["ks"] is None or delay["project"] < delay["ks"])),
        "false_alarms_per_100_clean": {**rate, "evaluations": len(clean)},
        "literal_pre_change_replay": {"evaluations": len(literal),
                                      "project_alarms": sum(v["project"] for v in literal),
                                      "ks_alarms": sum(v["ks"] for v in literal)},
    }


def run() -> dict:
    rows = [measure(series) for series in load()]
    return {"target_arl0_windows": scope_arl0(1), "alpha": ALPHA, "rule": RULE.to_dict(),
            "clean_replays": f"{STREAMS} streams x {EVALUATIONS} evaluations, blocks of {BLOCK}", "rows": rows}


def table(result: dict) -> str:
    lines = [f"{'series':28} {'change':8} {'delay proj':>10} {'(cusum/spread/rule)':>19} {'delay KS':>8} "
             f"{'FA/100 proj':>11} {'FA/100 KS':>9}"]
    for row in result["rows"]:
        d, f = row["delay_samples_after_change"], row["false_alarms_per_100_clean"]
        parts = "/".join(_n(d[key]) for key in ("cusum", "spread", "rule"))
        lines.append(f"{row['series']:28} {row['change_at']:8} {_n(d['project']):>10} {parts:>19} "
                     f"{_n(d['ks']):>8} {f['project']:>11} {f['ks']:>9}")
    return "\n".join(lines)


def _n(value: int | None) -> str:
    return "miss" if value is None else str(value)
