"""`edgefleet windows`: a device's or fleet's telemetry history, raw or in hourly or daily totals that add up
the roll-ups retention made (GET /api/v1/devices/{id}/windows, cloud/window_history.py)."""

from __future__ import annotations

import json
import math
import urllib.parse
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated

import typer
from rich.table import Table

from edgefleet.cli.app import app, out
from edgefleet.cli.fleet_commands import CloudOption, TokenOption
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError


class Resolution(str, Enum):
    raw = "raw"
    hour = "hour"
    day = "day"


def parse_time(value: str | None, option: str) -> float | None:
    """Unix seconds or an ISO 8601 date/time (UTC unless it says otherwise); EdgefleetError if neither."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError as err:
            raise EdgefleetError(f"{option}: expected Unix seconds or an ISO 8601 date/time such as "
                                 f"2026-12-01T08:00, got {value!r}") from err
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()
    if not math.isfinite(number) or number < 0:
        raise EdgefleetError(f"{option}: expected Unix seconds (0 or more), got {value!r}")
    return number


@app.command("windows")
def windows_command(
    device: Annotated[str | None, typer.Option(help="Device id")] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet id (instead of --device): its devices added up")] = None,
    resolution: Annotated[Resolution, typer.Option(help="raw windows, or hour or day totals")] = Resolution.raw,
    since: Annotated[str | None, typer.Option(help="Unix seconds or ISO date/time (default: 1 h, 2 days or "
                                                   "90 days before --until)")] = None,
    until: Annotated[str | None, typer.Option(help="Unix seconds or ISO date/time, excluded (default now)")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model; alone: every device serving it")] = None,
    version: Annotated[int | None, typer.Option(help="Only this model version")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows per page")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Rows to skip (the answer's next_offset)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON")] = False,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Telemetry history: requests, samples and errors per window, hour or day (oldest first)."""
    if device and fleet or not (device or fleet or model):
        raise EdgefleetError("pass one of --device ID or --fleet ID (optionally with --model NAME), or --model NAME")
    query: dict[str, object] = {"resolution": resolution.value, "limit": limit, "offset": offset}
    for name, value in (("since", parse_time(since, "--since")), ("until", parse_time(until, "--until")),
                        ("model", model if device or fleet else None), ("version", version)):
        if value is not None:
            query[name] = value
    quote = urllib.parse.quote
    path = (f"/api/v1/devices/{quote(device, safe='')}" if device else f"/api/v1/fleets/{quote(fleet, safe='')}"
            if fleet else f"/api/v1/models/{quote(model, safe='')}")
    answer = CloudClient(cloud, token).get(f"{path}/windows?{urllib.parse.urlencode(query)}")
    if as_json:
        out.print_json(json.dumps(answer))
        return
    out.print(windows_table(answer))
    if answer["next_offset"] is not None:
        out.print(f"more rows: --offset {answer['next_offset']}", markup=False, highlight=False)


def windows_table(answer: dict) -> Table:
    raw = answer["resolution"] == "raw"
    per_device = raw and answer["scope"] != "device"
    table = Table("start" if not raw else "end", "model", *(["device"] if per_device else []),
                  "windows", "requests", "samples", "errors", "error rate",
                  title=f"{answer['resolution']} telemetry of {answer['scope']} {answer['id']}")
    for row in answer["rows"]:
        stamp = datetime.fromtimestamp(row["end"] if raw else row["start"], timezone.utc)
        rate = "-" if row["error_rate"] is None else f"{row['error_rate']:.2%}"
        table.add_row(stamp.strftime("%Y-%m-%d %H:%M:%S" if raw else "%Y-%m-%d %H:%M"),
                      f"{row['model']['name']}:{row['model']['version']}",
                      *([row["device"]] if per_device else []),
                      str(row["windows"]), str(row["requests"]), str(row["samples"]), str(row["errors"]), rate)
    return table
