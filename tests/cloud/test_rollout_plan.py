"""The rollout rules without I/O: wave sizes, the deterministic device order, and each wave's verdict."""

from __future__ import annotations

import hashlib

import pytest

from edgefleet.cloud.rollout_plan import RolloutError, Strategy, decide, rollout_order, tally, wave_sizes


def test_waves_selection_and_decisions():
    assert wave_sizes([5, 25, 100], 10) == [1, 2, 7] and wave_sizes([5, 25, 100], 200) == [10, 40, 150]
    assert wave_sizes([5, 25, 100], 2) == [1, 1] and wave_sizes([100], 3) == [3]
    ids = [f"dev-{i}" for i in range(20)]
    order = rollout_order("d-1", ids)
    assert order == sorted(ids, key=lambda d: hashlib.sha256(("d-1" + d).encode()).hexdigest())
    assert order == rollout_order("d-1", reversed(ids)) and order != rollout_order("d-2", ids)

    strategy = Strategy(kind="waves", waves=(10, 100), success_threshold=0.75, max_failure_rate=0.25).checked()
    sizes = [4, 4]

    def verdict(states: list[str], current: int = 1, **kwargs: object) -> tuple[str, str]:
        rows = [(1 if i < 4 else 2, state) for i, state in enumerate(states)]
        decision = decide(strategy, tally(rows, sizes), current, approved=kwargs.get("approved", False),
                          timed_out=kwargs.get("timed_out", False))
        return decision.action, decision.reason

    assert verdict(["active", "active", "downloading", "pending"] + ["pending"] * 4)[0] == "wait"
    assert verdict(["active", "active", "active", "downloading"] + ["pending"] * 4)[0] == "advance"
    assert verdict(["active", "failed", "active", "active"] + ["pending"] * 4)[0] == "advance"  # 0.25 is allowed
    action, reason = verdict(["failed", "rolled_back", "active", "active"] + ["pending"] * 4)
    assert action == "abort" and reason.startswith("wave 1: 2 of 4 devices failed or rolled back (0.50 > ")
    action, reason = verdict(["active", "active", "received", "received"] + ["pending"] * 4, timed_out=True)
    assert action == "abort" and "timed out" in reason
    late = ["active", "rolled_back", "rolled_back", "active", "active", "active", "active", "active"]
    assert verdict(late, current=2)[0] == "abort"  # late failures of an earlier wave count
    assert verdict(["active"] * 8, current=2)[0] == "complete"
    paused = Strategy(kind="waves", waves=(10, 100), pause_for_approval=True).checked()
    assert decide(paused, tally([(1, "active")], [1, 1]), 1, approved=False, timed_out=False).action == "pause"
    assert decide(paused, tally([(1, "active")], [1, 1]), 1, approved=True, timed_out=False).action == "advance"

    for bad, message in (({"waves": (50, 25, 100)}, "strictly increasing"), ({"waves": (5, 50)}, "end at 100"),
                         ({"success_threshold": 0.0}, "success_threshold"), ({"max_failure_rate": 1.0}, "max_failure"),
                         ({"wave_timeout_seconds": 0}, "wave_timeout_seconds")):
        with pytest.raises(RolloutError, match=message):
            Strategy(kind="waves", **bad).checked()


def test_a_timeout_names_the_devices_that_never_answered():
    strategy = Strategy(wave_timeout_seconds=60).checked()
    waves = tally([(1, "active"), (1, "pending"), (1, "pending")], [3])
    decision = decide(strategy, waves, 1, approved=False, timed_out=True, silent=["pi-2", "pi-3"])
    assert decision.action == "abort"
    assert decision.reason.endswith("; no status from 2 device(s): pi-2, pi-3")
    many = [f"pi-{i}" for i in range(25)]
    reason = decide(strategy, waves, 1, approved=False, timed_out=True, silent=many).reason
    assert reason.endswith("pi-19 and 5 more")


@pytest.mark.parametrize(("field", "value", "says"), [
    ("wave_timeout_seconds", float("inf"), "strategy.wave_timeout_seconds must be within (0, 2592000], got inf"),
    ("wave_timeout_seconds", 1e12, "strategy.wave_timeout_seconds must be within (0, 2592000]"),
    ("health_window_seconds", float("nan"), "strategy.health_window_seconds must be within (0, 604800]"),
    ("download_timeout_seconds", 1e308, "strategy.download_timeout_seconds must be within (0, 604800]"),
    ("latency_budget_ms", float("inf"), "strategy.latency_budget_ms must be within (0, 3600000]"),
    ("canary_fraction", float("nan"), "strategy.canary_fraction must be within [0, 1]"),
    ("success_threshold", float("nan"), "strategy.success_threshold"),
    ("max_failure_rate", float("-inf"), "strategy.max_failure_rate"),
    ("resend_interval_seconds", 0.0, "strategy.resend_interval_seconds must be within (0, 86400]"),
    ("max_resends", 10**30, "strategy.max_resends must be within [0, 100]"),
])
def test_non_finite_and_absurd_numbers_are_refused_with_the_field(field, value, says):
    with pytest.raises(RolloutError) as refused:
        Strategy(**{field: value}).checked()
    assert says in str(refused.value)
