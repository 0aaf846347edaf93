"""Is a new model healthy? The thresholds an update is held to, and the checks that apply them.

    policy = HealthPolicy(max_error_rate=0.02, max_p99_latency_ms=50.0)
    failure = judge(host.stats(), policy, budget_ms=command.latency_budget_ms, latency=True)

`judge` looks at live-traffic stats in the shape of `ModelHost.stats()` (requests, errors, rejected,
error_rate, latency_p99_ms): the error rate counts model errors over requests that were not rejected as
malformed (a SchemaError is the request's fault, not the model's); fewer than `min_requests` such
requests are not judged at all. `golden_latency_p99` times the first golden example, batch 1, after a
warm-up: the figure a command's latency_budget_ms is checked against before a model serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.schema import take_samples
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.predictor import Predictor


@dataclass(frozen=True)
class HealthPolicy:
    max_error_rate: float = 0.02  # model errors / requests not rejected as malformed, in the window
    max_p99_latency_ms: float | None = None  # on live traffic; the command's latency_budget_ms applies too
    min_requests: int = 20  # below this many live requests, error rate and latency are not judged
    poll_seconds: float = 0.25  # how often the window looks at the error rate (it fails early)
    warmup_runs: int = 5
    golden_runs: int = 30  # timed single-example runs for the latency budget at self_testing
    max_health_retries: int = 1  # recover() re-runs an interrupted health window this many times


class UpdateFailed(EdgefleetError):
    """An update stage failed; `reason` is the Status reason code, `detail` goes into the Status."""

    def __init__(self, reason: str, message: str, detail: dict | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.detail = detail or {}


def judge(stats: dict, policy: HealthPolicy, budget_ms: float | None, *, latency: bool) -> UpdateFailed | None:
    """None if healthy, else why not. Latency is judged only when asked (at the end of a window: a p99
    over the first few requests says little)."""
    judged = stats["requests"] - stats.get("rejected", 0)
    if judged < policy.min_requests:
        return None
    if stats["error_rate"] > policy.max_error_rate:
        return UpdateFailed("error_rate", f"error rate {stats['error_rate']:.3f} over {policy.max_error_rate:g} "
                                          f"({stats['errors']} of {judged} requests)", {"health": stats})
    limits = [x for x in (policy.max_p99_latency_ms, budget_ms) if x is not None]
    p99 = stats.get("latency_p99_ms")
    if latency and limits and p99 is not None and p99 > min(limits):
        return UpdateFailed("latency", f"live p99 latency {p99:.3f} ms over {min(limits):g} ms", {"health": stats})
    return None


def candidate_stats(host: ModelHost) -> dict | None:
    """Live stats of the host's shadow or canary candidate, in the shape of ModelHost.stats()."""
    report = host.test_report()
    if report is None:
        return None
    if report["mode"] == "canary":
        return report["arms"]["candidate"]
    judged = report["compared"] + report["candidate_errors"]
    return {"requests": judged, "errors": report["candidate_errors"], "rejected": 0,
            "error_rate": report["candidate_error_rate"], "latency_p99_ms": report["latency_p99_ms"]["candidate"],
            "latency_p50_ms": report["latency_p50_ms"]["candidate"]}


def golden_latency_p99(predictor: Predictor, policy: HealthPolicy) -> float:
    """p99 latency in ms of the first golden example alone, over `golden_runs` runs after `warmup_runs`.
    Runs through predict(), so call it before the predictor has telemetry (before it serves)."""
    inputs, _, _ = predictor.bundle.golden()
    first = take_samples(predictor.bundle.inputs, inputs, 0, 1)  # on each input's batch axis
    for _ in range(policy.warmup_runs):
        predictor.predict(first)
    times = []
    for _ in range(max(1, policy.golden_runs)):
        start = time.perf_counter_ns()
        predictor.predict(first)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.percentile(times, 99))
