"""A sequential detector for streams that arrive a few samples at a time: two-sided CUSUM on the binned
standardized mean of each window, its threshold set from the reference for a false-alarm target.

The window tests (cloud/drift.py) judge one lookback at a time: on a slow stream (a reading a minute, a
row a quarter) a lookback holds a handful of samples and a moderate shift takes many of them to become
significant, while each new window forgets what the earlier ones said. CUSUM accumulates evidence over
windows instead (Page 1954). Each window's counts give z = sum of its samples' standardized values (the
values each bin stands for, cloud/drift_magnitude.py, minus the reference mean, over the reference sd)
and its sample count n; with k = DRIFT_SD / 2 (the detector is tuned for a move of DRIFT_SD sds)

    up   = max(0, up   + z - k n)        down = max(0, down - z - k n)        alarm when max(up, down) > h

and after an alarm both restart from 0 (a later alarm needs new evidence). Between alarms, the expected
number of clean windows is the in-control average run length, ARL0.

The threshold h is chosen from the reference, not from a normal table: the reference's own mean and sd
are estimates (25 years of the Nile: the mean is off by 0.2 sd), and that error is the same for every
window, so it accumulates in the sums. `calibrate` simulates the whole procedure under no drift: a
reference of m samples drawn from the reference's binned distribution (its estimated mean and sd used
as the detector would), then windows of the expected size drawn from the same distribution, and takes
the smallest h on a grid whose mean run length (censored at 2 * ARL0, which errs high) reaches the
target ARL0 in windows. Draws use a fixed seed, so one profile always gets the same threshold.

Only input features with magnitude facts get a detector; the state lives in memory per scope and
signal (the drift monitor's), so a restart starts the sums at 0, like an alarm does.
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
TARGET_ARL0 = 500  # clean windows between false alarms: 0.2 per 100 evaluations
RUNS = 200  # simulated clean streams per calibration
SEED = 14
_GRID = np.concatenate([np.arange(0.5, 10.0, 0.25), np.arange(10.0, 40.0, 1.0), np.arange(40.0, 200.0, 5.0)])


def calibrate(values: np.ndarray, reference: np.ndarray, window_samples: int, *, arl0: int = TARGET_ARL0,
              runs: int = RUNS, seed: int = SEED) -> float:
    """The smallest threshold h whose simulated in-control ARL reaches `arl0` windows (module docstring).
    values: the (B,) value of each finite bin; reference: its (B,) counts; window_samples: the window size."""
    values = np.asarray(values, np.float64)
    counts = np.asarray(reference, np.float64)[: len(values)]
    m = int(counts.sum())
    share = counts / m
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(m, share, size=runs).astype(np.float64)  # the reference each run was given
    mean = drawn @ values / m
    sd = np.sqrt(np.maximum(drawn @ values**2 / m - mean**2, 0.0))
    sd = np.where(sd > 0, sd, max(float(np.sqrt(share @ values**2 - (share @ values) ** 2)), 1e-12))
    k, horizon = DRIFT_SD / 2.0, 2 * arl0
    up, down = np.zeros(runs), np.zeros(runs)
    peaks = np.empty((horizon, runs))  # the highest sum so far: non-decreasing in time
    peak = np.zeros(runs)
    for start in range(0, horizon, 100):
        block = rng.multinomial(window_samples, share, size=(100, runs)).astype(np.float64)
        z = (block @ values - window_samples * mean) / sd  # (100, runs)
        for t in range(100):
            up = np.maximum(0.0, up + z[t] - k * window_samples)
            down = np.maximum(0.0, down - z[t] - k * window_samples)
            peak = peaks[start + t] = np.maximum(peak, np.maximum(up, down))
    # the run length at threshold h: the first window whose peak exceeds h (horizon if none)
    first = np.stack([np.searchsorted(peaks[:, run], _GRID, side="right") + 1 for run in range(runs)], axis=1)
    mean_run = np.minimum(first, horizon).mean(axis=1)
    good = np.flatnonzero(mean_run >= arl0)
    return float(_GRID[good[0]] if len(good) else _GRID[-1])


@dataclass
class Cusum:
    """One signal's two-sided CUSUM (module docstring). `values` are the bins' values standardized by the
    reference (value - mean) / sd; `threshold` comes from `calibrate`."""

    values: np.ndarray
    threshold: float
    up: float = 0.0
    down: float = 0.0
    windows: int = 0  # since the last reset
    samples: int = 0
    total: float = 0.0  # sum of standardized values since the last reset
    alarms: int = field(default=0)

    @classmethod
    def for_signal(cls, facts: Mapping, reference: np.ndarray, window_samples: int, *,
                   arl0: int = TARGET_ARL0) -> Cusum:
        values = np.asarray(facts["values"], np.float64)
        counts = tuple(int(c) for c in np.asarray(reference)[: len(values)])
        threshold = _threshold(tuple(values.tolist()), counts, max(int(window_samples), 1), arl0)
        return cls((values - facts["mean"]) / facts["std"], threshold)

    def update(self, counts: np.ndarray) -> dict:
        """Adds one window's counts (with the NaN column last); returns the evidence, with "alarm" True when
        the sums crossed the threshold (they then restart from 0)."""
        observed = np.asarray(counts, np.float64)[: len(self.values)]
        n = float(observed.sum())
        z = float(observed @ self.values)
        k = DRIFT_SD / 2.0
        self.up = max(0.0, self.up + z - k * n)
        self.down = max(0.0, self.down - z - k * n)
        self.windows += n > 0
        self.samples += int(n)
        self.total += z
        alarm = max(self.up, self.down) > self.threshold
        evidence = {"up": self.up, "down": self.down, "threshold": self.threshold, "windows": self.windows,
                    "samples": self.samples, "shift": self.total / self.samples if self.samples else None,
                    "alarm": alarm}
        if alarm:
            self.alarms += 1
            self.up = self.down = self.total = 0.0
            self.windows = self.samples = 0
        return evidence


SEQUENTIAL = "sequential_drift"  # the report section and the alert kind


@functools.lru_cache(maxsize=512)
def _threshold(values: tuple[float, ...], reference: tuple[int, ...], window_samples: int,
               arl0: int = TARGET_ARL0) -> float:
    """calibrate, remembered: one simulation per reference row and window size in a process."""
    return calibrate(np.asarray(values), np.asarray(reference), window_samples, arl0=arl0)


def _bucket(samples: int) -> int:
    """Window sizes calibrated to the nearest power of two, so a scope whose windows vary a little reuses
    one threshold (the simulation takes about half a second)."""
    return int(2 ** round(math.log2(max(samples, 1))))


class ScopeDetectors:
    """The CUSUMs of one scope (a device or a fleet, one model version): one per input feature row whose
    profile has magnitude facts. Each signal is held to TARGET_ARL0 on its own, so a scope of G signals
    expects about G false alarms per TARGET_ARL0 clean windows."""

    def __init__(self, profile: Mapping, window_samples: int) -> None:
        self.detectors: dict[str, tuple[str, int, Cusum]] = {}
        for feature in profile.get("features", []):
            for index, name in enumerate(feature["names"]):
                facts = facts_of(feature, index)
                if facts is None:
                    continue
                self.detectors[name] = (feature["input"], index,
                                        Cusum.for_signal(facts, feature["counts"][index], _bucket(window_samples)))

    def feed(self, windows: Iterable[Mapping[str, np.ndarray]]) -> dict | None:
        """Feeds the windows' feature counts (input -> (rows, bins), in event order); returns the report
        section {"verdict", "drifting", "target_arl0", "signals": {name: evidence + "verdict"}}, the evidence
        of an alarm kept over later windows of the same call; None for a profile without magnitude facts."""
        if not self.detectors:
            return None
        signals: dict[str, dict] = {}
        for features in windows:
            for name, (input_name, index, cusum) in self.detectors.items():
                evidence = cusum.update(features[input_name][index])
                if not signals.get(name, {}).get("alarm"):
                    signals[name] = evidence
        for evidence in signals.values():
            evidence["verdict"] = DRIFT if evidence["alarm"] else OK
        drifting = [name for name, evidence in signals.items() if evidence["alarm"]]
        return {"verdict": DRIFT if drifting else OK if signals else INSUFFICIENT, "drifting": drifting,
                "target_arl0": TARGET_ARL0, "signals": signals}


def evidence_summary(section: Mapping) -> str:
    """One line naming the alarming signals, for alert messages."""
    items = [f"{name} CUSUM {max(e['up'], e['down']):.1f} > {e['threshold']:.2f} over {e['windows']} windows "
             f"({e['samples']} samples, mean shift {e['shift']:+.2f} sd)"
             for name, e in section["signals"].items() if e["alarm"]]
    return "; ".join(items) if items else "no alarming signal"
