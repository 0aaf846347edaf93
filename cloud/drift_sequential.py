"""A sequential detector for streams that arrive a few samples at a time: two-sided CUSUMs on the binned
standardized mean and on the binned spread of each window, their thresholds set from the reference for a
false-alarm target.

The window tests (cloud/drift.py) judge one lookback at a time: on a slow stream (a reading a minute, a
row a quarter) a lookback holds a handful of samples and a moderate shift takes many of them to become
significant, while each new window forgets what the earlier ones said. CUSUM accumulates evidence over
windows instead (Page 1954). Each window's counts give z = sum of its samples' standardized values (the
values each bin stands for, cloud/drift_magnitude.py, minus the reference mean, over the reference sd)
and its sample count n; with k = DRIFT_SD / 2 (the detector is tuned for a move of DRIFT_SD sds)

    up   = max(0, up   + z - k n)        down = max(0, down - z - k n)        alarm when max(up, down) > h

and after an alarm both restart from 0 (a later alarm needs new evidence). Between alarms, the expected
number of clean windows is the in-control average run length, ARL0.

One k is optimal for one size of move only (Lorden 1971): tuned for 1 sd, the sums gain z - 0.5 per
sample, so a move of 3 sd still needs about h / 2.5 samples, and h is set by the many small false starts
of a chart that forgives little. The US real interest rate of 1980 moved about 3 reference sds: the
1-sd sums reached 7.3 of their 7.75 after three quarters, and KS saw it at the fourth, a tie. A second
pair of sums on the same z with k = LARGE_SD / 2 (the large-move chart: up_large, down_large) drifts
back to 0 fast on clean data, so its threshold is low and a large move crosses it a sample or two
earlier (the combined Shewhart-CUSUM of Lucas 1982; a Shewhart chart alone would alarm on one far
sample). An alarm of either pair is a "mean" alarm.

A mean CUSUM is blind to a change of spread (US GDP growth kept its mean and halved its volatility in
1984, the Great Moderation). Windows carry histograms, not sums of squares, so the spread statistic is
the binned one: each bin's value gives y = (value - mean)^2 / v, v the reference's binned variance about
its mean (so y averages 1 on reference data), and a second two-sided CUSUM adds the log-likelihood ratio
of a normal whose sd is SPREAD_RATIO times larger or smaller (r = SPREAD_RATIO^2):

    wider = max(0, wider + (1 - 1/r) Y / 2 - n ln(r) / 2)    narrower = max(0, narrower + n ln(r) / 2 - (r - 1) Y / 2)

with Y the window's sum of y, each y capped at SPREAD_CAP (a value 3 sds out counts as 3 sds): the
squares let a few outliers pass for a wider spread (a fleet where 1 device in 20 brightened read as
1.37 times the reference's spread), and the cap keeps that to the mean CUSUM and the window tests. Its
own threshold is simulated like the mean's; an alarm of either restarts both.

The threshold h is chosen from the reference, not from a normal table: the reference's own mean and sd
are estimates (25 years of the Nile: the mean is off by 0.2 sd), and that error is the same for every
window, so it accumulates in the sums. `calibrate` simulates the whole procedure under no drift: a
reference of m samples drawn from the reference's binned distribution (its estimated mean and sd used
as the detector would), then windows of the expected size drawn from the same distribution, and takes
the smallest h on a grid whose mean run length (censored at 2 * ARL0, which errs high) reaches the
target ARL0 in windows. Draws use a fixed seed, so one profile always gets the same threshold; the
1-sd and spread charts are calibrated on the same simulated streams.

The large-move chart's clean windows are not drawn from the reference's bins alone: of m exchangeable
clean samples and one more, the new one is the largest with probability 1 / (m + 1), so a clean sample
lands beyond the reference's range that often on each side, in a tail bin that stands for a value
beyond the range. Drawn from the reference alone, no clean window reached a tail bin and one such
sample crossed the large-move chart: 2.2 false alarms per 100 clean quarters of US GDP growth (76
reference quarters, 2 / 77 beyond the range per sample). Its draws put 1 / (m + 1) in the bin just beyond
each end of the reference's range. (The 1-sd and spread charts still draw from the reference alone: a far
sample moves them a bounded step that many must repeat. Simulated with the tails, their run lengths on
the four real series of bench_drift_detection.py are 180-650 clean windows, not the 1000 they were
held to; the thresholds that would reach 1000 cost the Nile's detection a sample, a tie with KS.)

A scope's target is for the scope, not for each statistic: held to TARGET_ARL0 each, a clean digits
device (2 signals, 4 statistics) alarmed once per about 125 windows, an alert on a healthy device every
two hours at a window a minute (ScopeDetectors). The large-move chart is held to the same per-statistic
target but not counted among the statistics: counted, the 1-sd and spread thresholds of a one-signal
scope rise from a target of 1000 windows to 1500 and US GDP's Great Moderation is seen a quarter later
(14, not 13); uncounted, a scope's clean alarms rise by at most one per per-statistic target (0.1 per 100
windows for one signal), and the measured rates of the four real series did not move.

Only input features with magnitude facts get a detector. `state` / `restore` turn the sums into plain
numbers, so the drift monitor keeps them in its database (cloud/drift_cusum_store.py) across restarts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from edgefleet.cloud.drift import DRIFT, INSUFFICIENT, OK
from edgefleet.cloud.drift_magnitude import facts_of

DRIFT_SD = 1.0  # the move (in reference sds) the detector is tuned for; k = DRIFT_SD / 2 per sample
LARGE_SD = 3.0  # the large-move chart of the mean statistic: k = LARGE_SD / 2 (module docstring)
SPREAD_RATIO = 2.0  # the spread statistic is tuned for an sd that doubles or halves
SPREAD_CAP = 9.0  # y counted at most as a value 3 reference sds from the mean: a few outliers are not a spread
TARGET_ARL0 = 500  # clean windows between false alarms: 0.2 per 100 evaluations
RUNS = 200  # simulated clean streams per calibration at TARGET_ARL0; fewer (longer) ones above it
MIN_RUNS = 50
MAX_ARL0 = 2000  # a scope's per-statistic target is TARGET_ARL0 times its statistics, up to this
SEED = 14
_GRID = np.concatenate([np.arange(0.5, 10.0, 0.25), np.arange(10.0, 40.0, 1.0), np.arange(40.0, 200.0, 5.0)])


def calibrate(values: np.ndarray, reference: np.ndarray, window_samples: int, *, statistic: str = "mean",
              arl0: int = TARGET_ARL0, runs: int | None = None, seed: int = SEED) -> float:
    """The smallest threshold h whose simulated in-control ARL reaches `arl0` windows (module docstring).
    values: the (B,) value of each finite bin; reference: its (B,) counts; window_samples: the window size;
    statistic: "mean" (the 1-sd chart), "large" (the large-move chart, its windows drawn with tails) or
    "spread"."""
    return _calibrate(values, reference, window_samples, (statistic,), arl0, runs, seed)[statistic]


def _calibrate(values: np.ndarray, reference: np.ndarray, window_samples: int, statistics: tuple[str, ...],
               arl0: int, runs: int | None, seed: int) -> dict[str, float]:
    """calibrate for several statistics on one set of simulated streams (the draws cost most)."""
    values = np.asarray(values, np.float64)
    counts = np.asarray(reference, np.float64)[: len(values)]
    m = int(counts.sum())
    share = counts / m
    runs = runs or max(RUNS * TARGET_ARL0 // max(arl0, TARGET_ARL0), MIN_RUNS)
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(m, share, size=runs).astype(np.float64)  # the reference each run was given
    clean = _with_tails(counts) if "large" in statistics else share  # the windows' draws (module docstring)
    mean = drawn @ values / m
    var = np.maximum(drawn @ values**2 / m - mean**2, 0.0)
    fallback = max(float(share @ values**2 - (share @ values) ** 2), 1e-24)
    var = np.where(var > 0, var, fallback)
    scores = [_scores(values[None, :], mean[:, None], var[:, None], name) for name in statistics]  # (runs, B)
    horizon = 2 * arl0
    sums = np.zeros((len(statistics), 2, runs))
    peaks = np.empty((len(statistics), horizon, runs))  # the highest sum so far: non-decreasing in time
    peak = np.zeros((len(statistics), runs))
    for start in range(0, horizon, 100):
        block = rng.multinomial(window_samples, clean, size=(100, runs)).astype(np.float64)
        steps = np.stack([np.einsum("trb,rb->tr", block, score) for pair in scores for score in pair], axis=1)
        steps = steps.reshape(100, len(statistics), 2, runs)
        for t in range(min(100, horizon - start)):
            sums = np.maximum(0.0, sums + steps[t])
            peak = peaks[:, start + t] = np.maximum(peak, sums.max(axis=1))
    thresholds = {}
    for index, name in enumerate(statistics):
        # the run length at threshold h: the first window whose peak exceeds h (horizon if none)
        first = np.stack([np.searchsorted(peaks[index, :, run], _GRID, side="right") + 1 for run in range(runs)],
                         axis=1)
        good = np.flatnonzero(np.minimum(first, horizon).mean(axis=1) >= arl0)
        thresholds[name] = float(_GRID[good[0]] if len(good) else _GRID[-1])
    return thresholds


def _with_tails(counts: np.ndarray) -> np.ndarray:
    """The shares clean windows are drawn from: the reference's, plus 1 / (m + 1) in the bin just beyond
    each end of its range (module docstring)."""
    share = counts / counts.sum()
    seen = np.flatnonzero(counts > 0)
    beyond = [index for index in (seen[0] - 1, seen[-1] + 1) if 0 <= index < len(counts)]
    if not beyond:
        return share
    tail = 1.0 / (counts.sum() + 1.0)
    share = share * (1.0 - tail * len(beyond))
    share[beyond] += tail
    return share


def _scores(values: np.ndarray, mean: np.ndarray, var: np.ndarray, statistic: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample increments of the two sums for a sample in each bin (module docstring): (up, down) for
    "mean" and "large", (wider, narrower) for "spread"."""
    if statistic in ("mean", "large"):
        z, k = (values - mean) / np.sqrt(var), (DRIFT_SD if statistic == "mean" else LARGE_SD) / 2.0
        return z - k, -z - k
    y, r = np.minimum((values - mean) ** 2 / var, SPREAD_CAP), SPREAD_RATIO**2
    return 0.5 * (1.0 - 1.0 / r) * y - 0.5 * math.log(r), 0.5 * math.log(r) - 0.5 * (r - 1.0) * y


_STATE = ("up", "down", "up_large", "down_large", "wider", "narrower", "windows", "samples", "total", "total_sq",
          "alarms")


@dataclass
class Cusum:
    """One signal's CUSUMs: 1-sd, large-move and spread (module docstring). `values` are the bins' values
    standardized by the reference, (value - mean) / sd; `spread` the bins' y = (value - mean)^2 / binned
    variance; the thresholds come from `calibrate` ("mean", "spread", and "large" for the large-move chart;
    inf: no large-move chart)."""

    values: np.ndarray
    threshold: float
    spread: np.ndarray
    spread_threshold: float
    large_threshold: float = math.inf
    up: float = 0.0
    down: float = 0.0
    up_large: float = 0.0
    down_large: float = 0.0
    wider: float = 0.0
    narrower: float = 0.0
    windows: int = 0  # since the last reset
    samples: int = 0
    total: float = 0.0  # sum of standardized values since the last reset
    total_sq: float = 0.0  # sum of y since the last reset
    alarms: int = field(default=0)

    @classmethod
    def for_signal(cls, facts: Mapping, reference: np.ndarray, window_samples: int, *,
                   arl0: int = TARGET_ARL0) -> Cusum:
        values = np.asarray(facts["values"], np.float64)
        counts = np.asarray(reference, np.float64)[: len(values)]
        thresholds = _thresholds(tuple(values.tolist()), tuple(int(c) for c in counts), max(int(window_samples), 1),
                                 arl0)
        deviation = (values - facts["mean"]) ** 2
        variance = float(counts @ deviation / counts.sum()) if counts.sum() > 0 else 0.0
        return cls((values - facts["mean"]) / facts["std"], thresholds["mean"],
                   np.minimum(deviation / max(variance, 1e-24), SPREAD_CAP), thresholds["spread"],
                   thresholds["large"])

    def update(self, counts: np.ndarray) -> dict:
        """Adds one window's counts (with the NaN column last); returns the evidence, with "alarm" True when
        a sum crossed its threshold ("statistic" says which: "mean", either of its charts, or "spread"; all sums
        then restart)."""
        observed = np.asarray(counts, np.float64)[: len(self.values)]
        n = float(observed.sum())
        z, y = float(observed @ self.values), float(observed @ self.spread)
        k, r = DRIFT_SD / 2.0, SPREAD_RATIO**2
        self.up = max(0.0, self.up + z - k * n)
        self.down = max(0.0, self.down - z - k * n)
        self.up_large = max(0.0, self.up_large + z - LARGE_SD / 2.0 * n)
        self.down_large = max(0.0, self.down_large - z - LARGE_SD / 2.0 * n)
        self.wider = max(0.0, self.wider + 0.5 * (1.0 - 1.0 / r) * y - 0.5 * math.log(r) * n)
        self.narrower = max(0.0, self.narrower + 0.5 * math.log(r) * n - 0.5 * (r - 1.0) * y)
        self.windows += n > 0
        self.samples += int(n)
        self.total += z
        self.total_sq += y
        statistic = ("mean" if (max(self.up, self.down) > self.threshold
                              or max(self.up_large, self.down_large) > self.large_threshold)
                     else "spread" if max(self.wider, self.narrower) > self.spread_threshold else None)
        evidence = {"up": self.up, "down": self.down, "threshold": self.threshold, "up_large": self.up_large,
                    "down_large": self.down_large, "large_threshold": self.large_threshold, "wider": self.wider,
                    "narrower": self.narrower, "spread_threshold": self.spread_threshold, "windows": self.windows,
                    "samples": self.samples, "shift": self.total / self.samples if self.samples else None,
                    "sd_ratio": math.sqrt(self.total_sq / self.samples) if self.samples else None,
                    "statistic": statistic, "alarm": statistic is not None}
        if statistic is not None:
            self.alarms += 1
            self.up = self.down = self.up_large = self.down_large = 0.0
            self.wider = self.narrower = self.total = self.total_sq = 0.0
            self.windows = self.samples = 0
        return evidence

    def state(self) -> dict:
        """The sums and counters as plain numbers (for the database)."""
        return {name: getattr(self, name) for name in _STATE}

    def restore(self, state: Mapping) -> None:
        for name in _STATE:
            setattr(self, name, type(getattr(self, name))(state.get(name, 0)))


SEQUENTIAL = "sequential_drift"  # the report section and the alert kind


@functools.lru_cache(maxsize=1024)
def _thresholds(values: tuple[float, ...], reference: tuple[int, ...], window_samples: int,
                arl0: int) -> dict[str, float]:
    """The three charts calibrated, remembered: per reference row and window size, one simulation of the
    reference's bins for "mean" and "spread" and one with tails for "large" (module docstring)."""
    values_array, reference_array = np.asarray(values), np.asarray(reference)
    return {**_calibrate(values_array, reference_array, window_samples, ("mean", "spread"), arl0, None, SEED),
            **_calibrate(values_array, reference_array, window_samples, ("large",), arl0, None, SEED)}


def scope_arl0(signals: int) -> int:
    """Each statistic's target run length in a scope of `signals` signals (ScopeDetectors)."""
    return min(TARGET_ARL0 * 2 * max(signals, 1), MAX_ARL0)


def _bucket(samples: int) -> int:
    """Window sizes calibrated to the nearest power of two, so a scope whose windows vary a little reuses
    one threshold (the two simulations, one with tails for the large-move chart, take 1-2 s for a digits
    row at a target of 2,000 windows on a loaded 2-core machine; one took 0.9 s before that chart)."""
    return int(2 ** round(math.log2(max(samples, 1))))


class ScopeDetectors:
    """The CUSUMs of one scope (a device or a fleet, one model version): one per input feature row whose
    profile has magnitude facts, calibrated for windows of `window_samples`. A scope of G signals runs 2G
    statistics (and G large-move charts, module docstring); each is held to min(2G * TARGET_ARL0, MAX_ARL0)
    clean windows, so the scope as a whole expects about one false alarm per TARGET_ARL0 windows up to
    2G = 4 (a digits device), and 2G per MAX_ARL0 above (the simulation's cost grows with the target: a
    row of many features pays in power what it gains in coverage, and the window tests still judge each
    feature alone)."""

    def __init__(self, profile: Mapping, window_samples: int) -> None:
        self.window_samples = _bucket(window_samples)
        rows = [(feature, index, name, facts) for feature in profile.get("features", [])
                for index, name in enumerate(feature["names"]) if (facts := facts_of(feature, index)) is not None]
        self.arl0 = scope_arl0(len(rows))
        self.detectors: dict[str, tuple[str, int, Cusum]] = {
            name: (feature["input"], index, Cusum.for_signal(facts, feature["counts"][index], self.window_samples,
                                                             arl0=self.arl0))
            for feature, index, name, facts in rows}

    def feed(self, steps: Iterable[tuple[float, Mapping[str, np.ndarray]]], *,
             report_from: float = -math.inf) -> dict | None:
        """Feeds (event end, feature counts: input -> (rows, bins)) steps in event order; returns the report
        section {"verdict", "drifting", "target_arl0", "signals": {name: evidence + "verdict" + "at"}}: per
        signal the evidence of its first alarm at a step ending at or after `report_from` (earlier steps are
        a replay of what was reported before), else of its last step; None without magnitude facts."""
        if not self.detectors:
            return None
        signals: dict[str, dict] = {}
        for end, features in steps:
            for name, (input_name, index, cusum) in self.detectors.items():
                evidence = {**cusum.update(features[input_name][index]), "at": end}
                evidence["alarm"] = evidence["alarm"] and end >= report_from
                if not signals.get(name, {}).get("alarm"):
                    signals[name] = evidence
        for evidence in signals.values():
            evidence["verdict"] = DRIFT if evidence["alarm"] else OK
        drifting = [name for name, evidence in signals.items() if evidence["alarm"]]
        return {"verdict": DRIFT if drifting else OK if signals else INSUFFICIENT, "drifting": drifting,
                "target_arl0": self.arl0, "signals": signals}

    def state(self) -> dict:
        return {name: cusum.state() for name, (_, _, cusum) in self.detectors.items()}

    def restore(self, state: Mapping) -> None:
        for name, (_, _, cusum) in self.detectors.items():
            if name in state:
                cusum.restore(state[name])


def evidence_summary(section: Mapping) -> str:
    """One line naming the alarming signals, for alert messages."""
    items = [f"{name} {_crossed(e)} over {e['windows']} windows ({e['samples']} samples, mean shift "
             f"{e['shift']:+.2f} sd, spread x{e['sd_ratio']:.2f})"
             for name, e in section["signals"].items() if e["alarm"]]
    return "; ".join(items) if items else "no alarming signal"


def _crossed(evidence: Mapping) -> str:
    if evidence["statistic"] == "spread":
        return f"spread CUSUM {max(evidence['wider'], evidence['narrower']):.1f} > {evidence['spread_threshold']:.2f}"
    large = max(evidence.get("up_large", 0.0), evidence.get("down_large", 0.0))
    if large > evidence.get("large_threshold", math.inf):
        return f"large-move CUSUM {large:.1f} > {evidence['large_threshold']:.2f}"
    return f"CUSUM {max(evidence['up'], evidence['down']):.1f} > {evidence['threshold']:.2f}"
