"""`edgefleet performance`: a device's, fleet's or model's accuracy over time, measured from labels that
arrived and estimated without them (GET /api/v1/.../performance, cloud/performance.py); `--by-slice`: one
table per slice the requests were tagged with (core/slices.py)."""

from __future__ import annotations

import json
import time
import urllib.parse
from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.table import Table

from edgefleet.cli.app import app, out
from edgefleet.cli.fleet_commands import CloudOption, TokenOption
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError


@app.command("performance")
def performance_command(
    device: Annotated[str | None, typer.Option(help="Device id")] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet id (instead of --device)")] = None,
    model: Annotated[str | None, typer.Option(help="Model name: every device serving it, or with --device/"
                                                   "--fleet only this model")] = None,
    version: Annotated[int | None, typer.Option(help="Model version")] = None,
    minutes: Annotated[float, typer.Option(help="How far back to look")] = 60.0,
    bucket: Annotated[float, typer.Option(help="Seconds per row")] = 60.0,
    by_slice: Annotated[bool, typer.Option("--by-slice", help="One table per slice (requests tagged ?slice=NAME "
                                                              "on the device)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON")] = False,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Accuracy (or MAE) over time: measured from labels sent to the devices, and for classifiers estimated
    from confidence alone, beside the accuracy the model had on its held-out data."""
    if device and fleet:
        raise EdgefleetError("pass one of --device ID, --fleet ID or --model NAME")
    if not (device or fleet or model):
        raise EdgefleetError("pass --device ID, --fleet ID or --model NAME")
    if minutes <= 0 or bucket <= 0:
        raise EdgefleetError("--minutes and --bucket must be positive")
    query = {"since": time.time() - minutes * 60, "bucket_seconds": bucket, "by": "slice" if by_slice else "model"}
    if version is not None:
        query["version"] = version
    quote = urllib.parse.quote
    if device or fleet:
        if model:
            query["model"] = model
        path = f"/api/v1/devices/{quote(device, safe='')}" if device else f"/api/v1/fleets/{quote(fleet, safe='')}"
    else:
        path = f"/api/v1/models/{quote(model, safe='')}"
    answer = CloudClient(cloud, token).get(f"{path}/performance?{urllib.parse.urlencode(query)}")
    if as_json:
        out.print_json(json.dumps(answer))
        return
    if not by_slice:
        out.print(performance_table(answer))
        return
    if not answer["slices"]:
        out.print(f"no slices in the {answer['scope']} {answer['id']}'s windows: tag requests with ?slice=NAME")
    for name in answer["slices"]:
        out.print(performance_table(answer, name))


def performance_table(answer: dict, slice_name: str | None = None) -> Table:
    """One row per (model version, bucket), of one slice if given; an estimate more than 0.05 below the
    reference is red."""
    references = {(m["model"]["name"], m["model"]["version"]): m["reference_accuracy"] for m in answer["models"]}
    of = f" slice {slice_name}" if slice_name is not None else ""
    table = Table("from", "model", "samples", "labels", "measured", "estimated", "reference",
                  title=f"performance of {answer['scope']} {answer['id']}{of} ({answer['bucket_seconds']:g} s rows)")
    for point in answer["points"]:
        if slice_name is not None and point["slice"] != slice_name:
            continue
        key = (point["model"]["name"], point["model"]["version"])
        reference, estimate = references.get(key), point.get("estimated_accuracy")
        if "mae" in point:
            measured = f"MAE {point['mae']:.4g}, RMSE {point['rmse']:.4g}"
        else:
            measured = "-" if point.get("accuracy") is None else f"{point['accuracy']:.3f}"
        shown = "-" if estimate is None else f"{estimate:.3f}"
        if estimate is not None and reference is not None and estimate < reference - 0.05:
            shown = f"[bold red]{shown}[/]"
        table.add_row(datetime.fromtimestamp(point["start"], timezone.utc).strftime("%H:%M:%S"),
                      f"{key[0]}:{key[1]}", str(point["samples"]), str(point["labels"]), measured, shown,
                      "-" if reference is None else f"{reference:.3f}")
    return table
