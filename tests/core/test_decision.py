"""The near-tie rule of the golden decision check (core/decision.py), on outputs whose margins are known."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.core.decision import MIN_DECISIONS, compare_decisions, decision_output, margins, tie_margin

CLASSES = ["cat", "dog", "owl"]
# six golden examples; margins 3, 2, 1, 0.5, 0.05, 0.01
SOURCE = np.array([[4.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 2.0], [1.5, 1.0, 0.0], [0.0, 1.05, 1.0],
                   [2.01, 2.0, 0.0]])


def test_margins_are_top1_minus_top2():
    np.testing.assert_allclose(margins(SOURCE), [3, 2, 1, 0.5, 0.05, 0.01], atol=1e-12)


def test_a_flip_of_a_decisive_example_fails_however_small_the_change():
    got = SOURCE.copy()
    got[3] = [1.24, 1.26, 0.0]  # each logit moved by 0.26, the margin was 0.5: decisive under a tie margin of 0.2
    check = compare_decisions(SOURCE, [got], tie=0.2, class_names=CLASSES)
    assert not check.passed and (check.compared, check.agreed, check.near_ties) == (4, 3, 2)
    assert check.problem() == "top-1 changed on 1 of 4 decisive golden examples (example 3: 'cat' became 'dog', " \
                              "source margin 0.5)"


def test_near_ties_may_flip_and_are_counted():
    got = SOURCE.copy()
    got[4], got[5] = [0.0, 1.0, 1.05], [2.0, 2.01, 0.0]  # margins 0.05 and 0.01, under a tie margin of 0.2
    check = compare_decisions(SOURCE, [got, got[:1]], tie=0.2)
    assert check.passed and check.record() == {"compared": 4, "agreed": 4, "near_ties": 2, "tie_margin": 0.2}


def test_every_run_counts_and_a_partial_run_covers_the_first_examples():
    flipped_first = SOURCE[:1][:, [1, 0, 2]]
    check = compare_decisions(SOURCE, [SOURCE, flipped_first], tie=0.2)
    assert not check.passed and check.agreed == 3 and "example 0: class 0 became class 1" in check.problem()


def test_too_few_decisive_examples_fail():
    check = compare_decisions(SOURCE, [SOURCE], tie=1.5)  # only margins 3 and 2 are over it
    assert not check.passed and check.compared == 2 < MIN_DECISIONS
    assert "only 2 of 6 golden examples have a top-1 margin over the tie margin 1.5 (at least 4" in check.problem()
    assert compare_decisions(SOURCE[:2], [SOURCE[:2]], tie=1.5).passed  # two examples: both must be decisive


def test_tie_margin_follows_the_noise_not_the_widened_tolerance():
    assert tie_margin({"atol": 1e-4, "rtol": 1e-3}) == 2e-4  # a float bundle: its atol is its noise
    quantized = {"atol": 2.53, "rtol": 1e-3, "noise": 0.16}
    assert tie_margin(quantized) == pytest.approx(0.32)
    assert tie_margin(quantized, checked_atol=2.53) == pytest.approx(0.32)  # the bundle's own atol: no change
    # a target that lowered the precision itself (fp16) checks with a wider atol of its own, which stands in
    assert tie_margin({"atol": 1e-4, "rtol": 1e-3}, checked_atol=0.04) == 0.04


def test_only_classifiers_have_a_decision():
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    assert decision_output({"task": "classification", "outputs": outputs}) == "logits"
    assert decision_output({"task": "other", "outputs": outputs}) is None
    assert decision_output({"outputs": outputs}) is None
