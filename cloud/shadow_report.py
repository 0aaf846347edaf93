"""What a shadow deployment found: the candidate's agreement with the serving model on live traffic.

A device in mode "shadow" mirrors each request to the candidate beside the serving model and, after the
health window, reports the comparison in its final "active" status (detail.phase "report"; the report of
edge_runtime/model_host.py): the requests compared, and for a classifier the samples whose top-1 class
both models agree on. The deployment API adds those counts over the deployment's devices from the stored
statuses; nothing else is stored. A device whose report predates the counts (an older agent) gives its
agreement ratio but adds nothing to the total.
"""

from __future__ import annotations

import json
import math

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.cloud.db import DeviceStatus


def shadow_agreement(session: Session, deployment_id: str) -> dict:
    """{"devices": [{device, agreement, agreeing, samples, compared, candidate_errors, ...}],
    "agreeing", "samples", "agreement"} over the latest report of each device of the deployment."""
    rows = session.scalars(select(DeviceStatus).where(DeviceStatus.deployment_id == deployment_id,
                                                      DeviceStatus.state == "active")
                           .order_by(DeviceStatus.device_id, DeviceStatus.seq))
    reports: dict[str, dict] = {}
    for row in rows:
        detail = (json.loads(row.payload).get("detail") or {})
        report = detail.get("report") if detail.get("phase") == "report" else None
        if isinstance(report, dict) and report.get("mode") == "shadow":
            reports[row.device_id] = report  # the latest of the device wins
    devices, agreeing, samples = [], 0, 0
    for device, report in sorted(reports.items()):
        counts = [report.get(key) for key in ("agreeing", "samples")]
        if all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts) and counts[0] <= counts[1]:
            agreeing, samples = agreeing + counts[0], samples + counts[1]
        p99 = report.get("latency_p99_ms") if isinstance(report.get("latency_p99_ms"), dict) else {}
        devices.append({"device": device, "agreement": _number(report.get("agreement")),
                        "agreeing": counts[0], "samples": counts[1], "compared": _number(report.get("compared")),
                        "candidate_errors": _number(report.get("candidate_errors")),
                        "dropped": _number(report.get("dropped")),
                        "latency_p99_ms": {"current": _number(p99.get("current")),
                                           "candidate": _number(p99.get("candidate"))}})
    return {"devices": devices, "agreeing": agreeing, "samples": samples,
            "agreement": agreeing / samples if samples else None}


def _number(value: object) -> float | int | None:
    """A device-sent number as it came, or None (not a number, or NaN/inf, which JSON cannot carry)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None
