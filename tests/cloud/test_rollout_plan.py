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
