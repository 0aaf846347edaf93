"""The task's decision on the golden examples: a classifier's top-1 must survive compilation, compression
and the move to the device, however wide the numeric tolerance has been made.

    tie = tie_margin(bundle.manifest["golden"], checked_atol=artifact_atol)
    check = compare_decisions(golden_out["logits"], [got["logits"]], tie, class_names)
    check.passed, check.record(), check.problem()

Which decision: for a bundle whose interface says `task: "classification"`, the argmax over the last
axis of its first output (logits or probabilities: softmax keeps the argmax). Other tasks (regression,
embeddings) have no decision here; their check stays numeric only. How far a run is from the golden
outputs in each task's own terms (top-1 agreement, min cosine, detection counts), pass or fail aside, is
measured by core/task_quality.py (the bench's quality fields).

The near-tie rule. The source model's golden outputs are the truth. An example's *margin* is its top-1
minus its top-2 value there. If every output may move by up to `noise`, the top-1 can change only where
the margin is at most 2 * noise; such an example is a *near tie* and is not compared (it is counted).
Every other golden example is *decisive* and must keep its top-1, on every run the check makes; at least
min(MIN_DECISIONS, examples) decisive examples must exist, else the golden set cannot tell a flipped
decision from noise and the check fails. So the tie margin is:

    tie_margin = 2 * noise,  noise = golden["noise"] if recorded, else golden["atol"]

`golden["noise"]` is written by the stage that lowered the bundle's precision (cloud/compress/quantize.py:
the int8 model's measured max abs error against the float model on the golden inputs), so it is measured
independently of any later artifact, and it is *not* the widened atol (3x the noise, or more): widening
the numeric tolerance never widens the tie margin. A compile target that lowers precision itself (fp16,
bf16, int8 from a float model) and therefore checks with its own atol, wider than the bundle's, has no
such measurement; its atol stands in: tie_margin = max(the bundle's, that atol).

The noise can never be the artifact's own error: an artifact whose outputs moved by d can flip only
examples with margin below 2 * d, so taking d as the noise would excuse every flip it makes.

Consequence: a lowered model whose error is large against the golden margins fails for too few decisive
examples even if it flips nothing (the digits CNN quantized on 30%-brightness calibration images, logits
clipped at 5.7: max abs error 7.9 against margins of 1.2 to 8.1). Its golden examples cannot tell a flip
from its error, so nothing vouches for its decisions on the device; the message says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_DECISIONS = 4  # decisive golden examples a check needs (or all of them, if there are fewer)
TIE_FACTOR = 2.0  # a top-2 gap moves by up to twice what each output moves


def decision_output(interface: Mapping) -> str | None:
    """The output whose argmax is the task's decision, or None for a task without one."""
    outputs = interface.get("outputs") or []
    if interface.get("task") != "classification" or not outputs:
        return None
    return str(outputs[0]["name"])


def tie_margin(golden: Mapping, checked_atol: float | None = None) -> float:
    """The top-1 margin at or below which a golden example is a near tie (module docstring).

    golden: the manifest's golden entry. checked_atol: the atol an artifact was checked with, when the
    target chose its own; it counts only where wider than the bundle's atol.
    """
    noise = float(golden["noise"]) if golden.get("noise") is not None else float(golden["atol"])
    margin = TIE_FACTOR * noise
    if checked_atol is not None and float(checked_atol) > float(golden["atol"]):
        margin = max(margin, float(checked_atol))
    return margin


def margins(scores: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 along the last axis, per example (infinite for a single class)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if scores.shape[1] < 2:
        return np.full(len(scores), np.inf)
    top2 = np.partition(scores, -2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@dataclass(frozen=True)
class DecisionCheck:
    """How the golden decisions fared. `flips` says which decisive examples changed, in words."""

    tie_margin: float
    examples: int
    compared: int  # decisive examples (margin over tie_margin)
    agreed: int  # of those, how many kept their top-1 on every run
    near_ties: int
    flips: tuple[str, ...] = ()

    @property
    def required(self) -> int:
        return min(MIN_DECISIONS, self.examples)

    @property
    def passed(self) -> bool:
        return self.agreed == self.compared and self.compared >= self.required

    def record(self) -> dict:
        """The manifest's record: {"compared", "agreed", "near_ties", "tie_margin"}."""
        return {"compared": self.compared, "agreed": self.agreed, "near_ties": self.near_ties,
                "tie_margin": self.tie_margin}

    def problem(self) -> str:
        """Why the check failed, in one line ("" if it passed)."""
        if self.agreed != self.compared:
            return (f"top-1 changed on {self.compared - self.agreed} of {self.compared} decisive golden examples "
                    f"({'; '.join(self.flips)})")
        if self.compared < self.required:
            return (f"only {self.compared} of {self.examples} golden examples have a top-1 margin over the tie "
                    f"margin {self.tie_margin:.3g} (at least {self.required} are needed to check decisions): "
                    f"export with more golden examples (golden_count) or lower the precision less")
        return ""


def compare_decisions(want: np.ndarray, runs: Sequence[np.ndarray], tie: float,
                      class_names: Sequence[str] | None = None) -> DecisionCheck:
    """Compares the top-1 of each run with the source's golden outputs `want`, by the near-tie rule.

    Each run holds outputs for the first len(run) golden examples (a batch of all, or just the first).
    """
    want = np.asarray(want)
    source_top = np.asarray(want, dtype=np.float64).reshape(len(want), -1).argmax(axis=1)
    source_margin = margins(want)
    decisive = source_margin > tie
    flipped: dict[int, int] = {}
    for run in runs:
        got_top = np.asarray(run, dtype=np.float64).reshape(len(run), -1).argmax(axis=1)
        for i in np.flatnonzero(decisive[:len(run)] & (got_top != source_top[:len(run)])):
            flipped.setdefault(int(i), int(got_top[i]))
    def name(c: int) -> str:
        return repr(class_names[c]) if class_names and c < len(class_names) else f"class {c}"

    flips = tuple(f"example {i}: {name(source_top[i])} became {name(got)}, source margin {source_margin[i]:.3g}"
                  for i, got in sorted(flipped.items()))
    compared = int(decisive.sum())
    return DecisionCheck(float(tie), len(want), compared, compared - len(flipped), len(want) - compared, flips)
