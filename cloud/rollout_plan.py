"""The rules of a staged rollout, without I/O: the strategy, the waves, who goes in which, when to move on.

- **Waves** are cumulative percentages of the target (`[5, 25, 100]`): wave k holds the devices from
  ceil(p[k-1]% of N) to ceil(p[k]% of N), at least one device in the first; waves that come out empty are
  dropped. Kind "all" is one wave of 100%.
- **Who goes first** is deterministic and unbiased by id: devices sorted by sha256(deployment id + device id).
- **Abort** as soon as any wave sent so far has more than `max_failure_rate` of its devices failed or
  rolled back (late failures of earlier waves count too), when the current wave can no longer reach
  `success_threshold` (too many failed), or when it times out (the reason names the devices that never
  answered with any status).
- **Numbers** are finite and bounded (MAX_SECONDS, core.ota.LIMITS): a request with an infinite or absurd
  timeout is refused with the field's name, never stored.
- **Advance** when the current wave's fraction of "active" devices reaches `success_threshold`; after the
  first wave, pause until approved if `pause_for_approval`; after the last, the deployment is complete.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict

from edgefleet.cloud.quality_gates import QualityGates
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.ota import LIMITS, STATES

DEPLOYMENT_STATES = ("pending", "running", "paused", "completed", "aborted")
OPEN_STATES = ("pending", "running", "paused")  # the engine still acts on these
DEVICE_STATES = ("pending", *STATES)
FAILED_STATES = ("failed", "rolled_back")
MOVED_STATES = ("switching", "health_check", "active")  # a device's install reached the switch (mode "switch")
DEFAULT_WAVES = (5, 25, 100)


class RolloutError(EdgefleetError):
    """A deployment request that cannot be planned (the HTTP layer answers 400 with the message)."""


class Strategy(BaseModel):
    """How a deployment proceeds; stored with it as JSON (every field, defaults filled in)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["all", "waves"] = "all"
    waves: tuple[int, ...] | None = None  # cumulative percent; default (5, 25, 100) for "waves", (100,) for "all"
    success_threshold: float = 0.9  # fraction of a wave that must be "active" to advance
    max_failure_rate: float = 0.2  # a wave with more failed + rolled_back than this aborts the deployment
    pause_for_approval: bool = False  # pause after the first wave until POST .../approve
    wave_timeout_seconds: float = 600.0
    health_window_seconds: float = 60.0  # the device watches the new model this long before "active"
    latency_budget_ms: float | None = None  # the device fails the health check above this p95 latency
    mode: Literal["switch", "shadow", "canary"] = "switch"
    canary_fraction: float = 0.1  # mode "canary": the share of local requests the new model answers
    download_timeout_seconds: float = 300.0  # the device's limit for the whole download
    # An install no status answered is re-sent (same command id: devices ignore an id seen before) this
    # often, at most max_resends times: a command the broker lost (a restart without persistence) still
    # arrives once the device is back.
    resend_interval_seconds: float = 60.0
    max_resends: int = 3
    # Judged on the first wave against the devices not yet moved (cloud/quality_gates.py); mode "switch".
    quality_gates: QualityGates | None = None

    def checked(self) -> Strategy:
        """This strategy with its waves filled in; raises RolloutError naming the first bad field."""
        waves = self.waves
        if waves is None:
            waves = DEFAULT_WAVES if self.kind == "waves" else (100,)
        elif self.kind == "all" and tuple(waves) != (100,):
            raise RolloutError("strategy.waves: kind 'all' is one wave of 100%; use kind 'waves' for stages")
        increasing = all(a < b for a, b in zip(waves, waves[1:], strict=False))
        if not waves or any(not 0 < p <= 100 for p in waves) or not increasing:
            raise RolloutError(f"strategy.waves must be strictly increasing percentages in (0, 100], got {list(waves)}")
        if waves[-1] != 100:
            raise RolloutError(f"strategy.waves must end at 100 (the whole target), got {list(waves)}")
        _within("success_threshold", self.success_threshold, 0.0, 1.0, low_open=True)
        _within("max_failure_rate", self.max_failure_rate, 0.0, 1.0, high_open=True)
        _within("canary_fraction", self.canary_fraction, 0.0, 1.0)
        for name, high in MAX_SECONDS.items():
            _within(name, getattr(self, name), 0.0, high, low_open=True)
        if self.latency_budget_ms is not None:
            _within("latency_budget_ms", self.latency_budget_ms, 0.0, LIMITS["latency_budget_ms"], low_open=True)
        _within("max_resends", self.max_resends, 0, MAX_RESENDS)
        if self.quality_gates is not None:
            self.quality_gates.checked()
            if self.mode != "switch":
                raise RolloutError(f"strategy.quality_gates need mode 'switch' (the canaries must answer users "
                                   f"with the candidate), got mode {self.mode!r}")
            if len(waves) < 2:
                raise RolloutError("strategy.quality_gates need at least two waves: the first is judged against "
                                   "the devices of the others (kind 'waves')")
        return self.model_copy(update={"waves": tuple(waves)})


# Finite upper bounds: an infinite or absurd timeout is refused here, not stored and then ignored by every
# device (the command's own fields share core.ota.LIMITS with the device's parser).
MAX_SECONDS = {"wave_timeout_seconds": 30 * 86400.0, "health_window_seconds": LIMITS["health_window_seconds"],
               "download_timeout_seconds": LIMITS["timeout_seconds"], "resend_interval_seconds": 86400.0}
MAX_RESENDS = 100


def _within(name: str, value: float, low: float, high: float, *, low_open: bool = False,
            high_open: bool = False) -> None:
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok or not math.isfinite(value):
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        raise RolloutError(f"strategy.{name} must be within {left}{_plain(low)}, {_plain(high)}{right}, "
                           f"got {_plain(value)}")


def _plain(number: float) -> str:
    """604800 rather than 604800.0 or 6.048e+05; an integer as it came; inf and nan as such."""
    if isinstance(number, int):
        return str(number)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:g}"


def rollout_order(deployment_id: str, device_ids: Iterable[str]) -> list[str]:
    """The devices in the order they receive the update: by sha256(deployment id + device id)."""
    return sorted(device_ids, key=lambda d: (hashlib.sha256((deployment_id + d).encode()).hexdigest(), d))


def wave_sizes(percents: Sequence[int], count: int) -> list[int]:
    """Devices per wave for `count` devices and cumulative `percents`; empty waves are left out."""
    sizes, done = [], 0
    for percent in percents:
        upto = min(count, max(1, -(-percent * count // 100)))  # ceil without floats
        if upto > done:
            sizes.append(upto - done)
            done = upto
    return sizes


@dataclass(frozen=True)
class WaveTally:
    wave: int  # 1-based
    size: int
    counts: dict[str, int]  # devices by state

    @property
    def active(self) -> int:
        return self.counts.get("active", 0)

    @property
    def failed(self) -> int:
        return sum(self.counts.get(state, 0) for state in FAILED_STATES)


def tally(wave_of_each: Iterable[tuple[int, str]], sizes: Sequence[int]) -> list[WaveTally]:
    """Per wave, how many devices are in each state; `wave_of_each` is (wave, state) per device."""
    counts: dict[int, Counter] = {wave: Counter() for wave in range(1, len(sizes) + 1)}
    for wave, state in wave_of_each:
        counts[wave][state] += 1
    return [WaveTally(wave, size, dict(counts[wave])) for wave, size in enumerate(sizes, start=1)]


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "advance", "pause", "complete", "abort"]
    reason: str = ""


def failure(strategy: Strategy, tallies: Sequence[WaveTally], upto: int) -> str | None:
    """Why the deployment must abort because of failed devices in waves 1..upto, or None."""
    for wave in tallies[:upto]:
        if wave.size and wave.failed / wave.size > strategy.max_failure_rate:
            return (f"wave {wave.wave}: {wave.failed} of {wave.size} devices failed or rolled back "
                    f"({wave.failed / wave.size:.2f} > max_failure_rate {strategy.max_failure_rate:.2f})")
    return None


def decide(strategy: Strategy, tallies: Sequence[WaveTally], current: int, *, approved: bool,
           timed_out: bool, silent: Sequence[str] = ()) -> Decision:
    """What a running deployment in wave `current` (1-based) does next; `silent` are the devices of the
    waves sent so far that never answered with any status (named in a timeout's reason)."""
    reason = failure(strategy, tallies, current)
    if reason:
        return Decision("abort", reason)
    wave = tallies[current - 1]
    if wave.active / wave.size >= strategy.success_threshold:
        if current == len(tallies):
            return Decision("complete", f"{len(tallies)} wave(s) done")
        if strategy.pause_for_approval and current == 1 and not approved:
            return Decision("pause", f"wave 1 done ({wave.active} of {wave.size} active); waiting for approval")
        return Decision("advance")
    if (wave.size - wave.failed) / wave.size < strategy.success_threshold:
        return Decision("abort", f"wave {wave.wave}: {wave.failed} of {wave.size} devices failed or rolled back, "
                                 f"so it cannot reach success_threshold {strategy.success_threshold:.2f}")
    if timed_out:
        return Decision("abort", f"wave {wave.wave} timed out after {strategy.wave_timeout_seconds:g} s with "
                                 f"{wave.active} of {wave.size} devices active "
                                 f"(success_threshold {strategy.success_threshold:.2f})" + _silent(silent))
    return Decision("wait")


def _silent(devices: Sequence[str], shown: int = 20) -> str:
    if not devices:
        return ""
    more = f" and {len(devices) - shown} more" if len(devices) > shown else ""
    return f"; no status from {len(devices)} device(s): {', '.join(devices[:shown])}{more}"
