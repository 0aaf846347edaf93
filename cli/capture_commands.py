"""`edgefleet capture settings|list`: a fleet's data capture settings, and the samples its devices captured,
each with the label the feedback API received for its request id (cloud/capture_store.py)."""

from __future__ import annotations

import json
import time
import urllib.parse
from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import app, out
from edgefleet.cli.fleet_commands import CloudOption, TokenOption
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError

capture_app = typer.Typer(no_args_is_help=True, help="Data capture: per-fleet settings and the captured samples.")
app.add_typer(capture_app, name="capture")


@capture_app.command("settings")
def settings(
    fleet: Annotated[str, typer.Argument(help="Fleet id")],
    enable: Annotated[bool | None, typer.Option("--enable/--disable", help="Turn capture on or off")] = None,
    never: Annotated[bool | None, typer.Option("--never/--allow", help="The privacy switch: never capture "
                                                                       "(wins over --enable)")] = None,
    sample_rate: Annotated[float | None, typer.Option(help="Share of requests drawn, 0..1")] = None,
    max_per_second: Annotated[float | None, typer.Option(help="Samples per second per device at most")] = None,
    max_sample_bytes: Annotated[int | None, typer.Option(help="Bytes per sample at most")] = None,
    max_spool_bytes: Annotated[int | None, typer.Option(help="Bytes waiting on a device at most")] = None,
    low_confidence_below: Annotated[float | None, typer.Option(help="Only requests whose top-1 confidence "
                                                                    "is below this")] = None,
    only_during_drift: Annotated[bool | None, typer.Option("--only-during-drift/--always",
                                                           help="Only while a drift alert is open")] = None,
    retention_days: Annotated[float | None, typer.Option(help="Days the cloud keeps a sample")] = None,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Show a fleet's capture settings; with options, change those fields (the others keep their value)."""
    changes = {name: value for name, value in (
        ("enabled", enable), ("never_capture", never), ("sample_rate", sample_rate),
        ("max_per_second", max_per_second), ("max_sample_bytes", max_sample_bytes),
        ("max_spool_bytes", max_spool_bytes), ("low_confidence_below", low_confidence_below),
        ("only_during_drift", only_during_drift), ("retention_days", retention_days)) if value is not None}
    client = CloudClient(cloud, token)
    path = f"/api/v1/fleets/{urllib.parse.quote(fleet, safe='')}/capture"
    answer = client.put_json(path, changes) if changes else client.get(path)
    out.print_json(json.dumps(answer))


@capture_app.command("list")
def list_captures(
    device: Annotated[str | None, typer.Option(help="Device id")] = None,
    fleet: Annotated[str | None, typer.Option(help="Fleet id")] = None,
    model: Annotated[str | None, typer.Option(help="Model name")] = None,
    version: Annotated[int | None, typer.Option(help="Model version")] = None,
    minutes: Annotated[float | None, typer.Option(help="Only samples captured in the last this many minutes")] = None,
    limit: Annotated[int, typer.Option(help="Rows at most (1..1000)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON")] = False,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Captured samples, oldest first, with the label that arrived for each request (if any)."""
    if minutes is not None and minutes <= 0:
        raise EdgefleetError("--minutes must be positive")
    if not 1 <= limit <= 1000:
        raise EdgefleetError("--limit must be 1..1000")
    query = {k: v for k, v in (("device", device), ("fleet", fleet), ("model", model), ("version", version),
                               ("limit", limit)) if v is not None}
    if minutes is not None:
        query["since"] = time.time() - minutes * 60
    rows = CloudClient(cloud, token).get(f"/api/v1/captures?{urllib.parse.urlencode(query)}")
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("id", "captured", "device", "model", "request id", "reason", "confidence", "inputs", "label",
                  title=f"{len(rows)} captured samples")
    for row in rows:
        label = row["label"]
        shown = "-" if label is None else json.dumps(label.get("label", label.get("value")))
        inputs = ", ".join(f"{name} {spec['dtype']}{spec['shape']}" for name, spec in row["inputs"].items())
        confidence = "-" if row["confidence"] is None else f"{row['confidence']:.3f}"
        table.add_row(str(row["id"]), datetime.fromtimestamp(row["captured_at"], timezone.utc).strftime("%H:%M:%S"),
                      escape(row["device"]), escape(f"{row['model']['name']}:{row['model']['version']}"),
                      escape(row["request_id"]), row["reason"], confidence, escape(inputs), escape(shown))
    out.print(table)
