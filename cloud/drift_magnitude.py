"""How far a signal moved, in reference standard deviations, from binned counts alone.

PSI, JS and chi-square compare shares of bins and are blind to distance: every bin is as far from every
other. With the range and tail bins of core/magnitude.py and the reference's per-bin means, each finite
bin stands for one value (the reference's mean in it; the midpoint of a bin the reference never reached;
the inner edge of an open-ended outermost bin, so a move beyond 4 s is counted as at least that), and
two location statistics follow, both divided by the reference's standard deviation s:

    shift        (binned window mean - reference mean) / s: signed, the level move (-3 = three s lower)
    wasserstein  the Wasserstein-1 distance of the two binned distributions / s (sum over adjacent bins of
                 |F_window - F_reference| times the distance between their values): how much mass moved
                 how far, so a change of spread counts too; always >= |shift|

They decide alongside the test (cloud/drift.py): a significant difference whose wasserstein is below
SHIFT_FLOOR is too small to page anyone whatever its PSI (a +0.4% level rise of a series whose quantile
bins are narrow), and one at SHIFT_LARGE or beyond is drift even when the PSI threshold is not met (a
collapse that lands in one bin). Without the facts (a profile written before them, a signal that is
not an input feature) both are None and the rule is the PSI/chi-square one alone.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SHIFT_FLOOR = 0.1  # below this many reference stds of Wasserstein-1 a difference never pages
SHIFT_LARGE = 1.0  # at or beyond it a significant difference is drift whatever its PSI


def bin_values(edges: list, bin_means: list) -> np.ndarray:
    """The value each finite bin stands for (module docstring); edges (E,), bin_means (E + 1,)."""
    edges_array = np.asarray(edges, np.float64)
    values = np.empty(len(edges_array) + 1)
    for index, mean in enumerate(bin_means):
        if mean is not None:
            values[index] = mean
        elif index == 0:
            values[index] = edges_array[0]
        elif index == len(edges_array):
            values[index] = edges_array[-1]
        else:
            values[index] = 0.5 * (edges_array[index - 1] + edges_array[index])
    return np.maximum.accumulate(values)  # a bin mean sits inside its bin; this only guards rounding


def facts_of(feature: Mapping, row: int) -> dict | None:
    """The magnitude facts of one row of a profile feature, or None if the profile has none."""
    facts = feature.get("magnitude")
    if not facts:
        return None
    std = facts["std"][row]
    if std is None or not std > 0:
        return None
    lag1 = (facts.get("lag1") or [None] * (row + 1))[row]  # a profile written before it: None, the iid tests
    return {"values": bin_values(feature["edges"][row], facts["bin_means"][row]), "mean": float(facts["mean"][row]),
            "std": float(std), "lag1": None if lag1 is None else float(lag1)}


def location(observed: np.ndarray, reference: np.ndarray, facts: Mapping | None) -> dict | None:
    """{"shift", "wasserstein"} of window counts against reference counts (both with the NaN column last)."""
    if facts is None:
        return None
    values = facts["values"]
    if not np.isfinite(values).all():
        return None
    obs = np.asarray(observed, np.float64)[: len(values)]
    ref = np.asarray(reference, np.float64)[: len(values)]
    if obs.sum() <= 0 or ref.sum() <= 0:
        return None
    p, q = obs / obs.sum(), ref / ref.sum()
    shift = (float(p @ values) - facts["mean"]) / facts["std"]
    gaps = np.diff(values)
    wasserstein = float(np.sum(np.abs(np.cumsum(p)[:-1] - np.cumsum(q)[:-1]) * gaps)) / facts["std"]
    return {"shift": shift, "wasserstein": max(wasserstein, abs(shift))}


def decide(significant: bool, psi_above: bool, moved: Mapping | None) -> bool:
    """Drift from the test, the PSI condition and, where known, the distance moved (module docstring)."""
    if not significant:
        return False
    if moved is None:
        return psi_above
    if moved["wasserstein"] < SHIFT_FLOOR:
        return False
    return psi_above or moved["wasserstein"] >= SHIFT_LARGE
