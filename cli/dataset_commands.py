"""`edgefleet dataset create|list|show|export`: captured samples frozen with their labels by name and version,
fingerprinted (cloud/dataset_store.py), and exported as the files `edgefleet loop stage evaluate --recent`
reads: DIR/dataset.npz (inputs by name, `y`, `slice`, `captured_at`) and DIR/dataset.json (name, version, fingerprint,
filter, counts per class and slice, time range, and the members in the .npz's row order)."""

from __future__ import annotations

import json
import os
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import app, out
from edgefleet.cli.fleet_commands import CloudOption, TokenOption
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.topics import check_id

dataset_app = typer.Typer(no_args_is_help=True, help="Datasets: captured samples frozen with their labels.")
app.add_typer(dataset_app, name="dataset")
NPZ, JSON_FILE = "dataset.npz", "dataset.json"


def _time(value: str | None, flag: str) -> float | None:
    """Unix seconds or an ISO 8601 time (UTC when it names no zone)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise EdgefleetError(f"{flag} {value!r} is neither unix seconds nor an ISO 8601 time") from err
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _ref(ref: str) -> str:
    """NAME[:VERSION] as the API's path: /datasets/NAME/VERSION (latest without one)."""
    name, _, version = ref.partition(":")
    check_id(name, "dataset name")
    if version and not (version.isdigit() and len(version) < 10):
        raise EdgefleetError(f"dataset version {version!r} in {ref!r} must be a number (NAME or NAME:VERSION)")
    return f"/api/v1/datasets/{name}/{version or 'latest'}"


@dataset_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Dataset name; each create adds its next version")],
    fleet: Annotated[str | None, typer.Option(help="Fleet id")] = None,
    device: Annotated[str | None, typer.Option(help="Device id")] = None,
    model: Annotated[str | None, typer.Option(help="Model name")] = None,
    version: Annotated[int | None, typer.Option(help="Model version (with --model)")] = None,
    since: Annotated[str | None, typer.Option(help="Captured at or after (unix seconds or ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="Captured before (unix seconds or ISO 8601)")] = None,
    slice_name: Annotated[str | None, typer.Option("--slice", help="Only samples of this slice")] = None,
    labelled_only: Annotated[bool, typer.Option("--labelled-only", help="Only samples whose label arrived")] = False,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Freeze the captures the filter selects, with the labels that arrived, as NAME's next version."""
    check_id(name, "dataset name")
    body = {k: v for k, v in (("name", name), ("fleet", fleet), ("device", device), ("model", model),
                              ("version", version), ("since", _time(since, "--since")),
                              ("until", _time(until, "--until")), ("slice", slice_name)) if v is not None}
    record = CloudClient(cloud, token).post_json("/api/v1/datasets", {**body, "labelled_only": labelled_only})
    out.print(f"dataset {escape(record['name'])}:{record['version']}: {record['samples']} samples "
              f"({record['labelled']} labelled), fingerprint {record['fingerprint']}")


@dataset_app.command("list")
def list_datasets(
    name: Annotated[str | None, typer.Option(help="Only this dataset's versions")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON")] = False,
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Every dataset version, oldest first."""
    query = "" if name is None else "?" + urllib.parse.urlencode({"name": check_id(name, "dataset name")})
    records = CloudClient(cloud, token).get(f"/api/v1/datasets{query}")
    if as_json:
        out.print_json(json.dumps(records))
        return
    table = Table("dataset", "created", "samples", "labelled", "classes", "slices", "fingerprint",
                  title=f"{len(records)} dataset versions")
    for r in records:
        table.add_row(escape(f"{r['name']}:{r['version']}"),
                      datetime.fromtimestamp(r["created_at"], timezone.utc).strftime("%Y-%m-%d %H:%M"),
                      str(r["samples"]), str(r["labelled"]), str(len(r["classes"])), str(len(r["slices"])),
                      r["fingerprint"][:12])
    out.print(table)


@dataset_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(metavar="NAME[:VERSION]", help="The latest version without one")],
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """One dataset version as JSON: filter, fingerprint, counts per class and slice, time range."""
    out.print_json(json.dumps(CloudClient(cloud, token).get(_ref(ref))))


@dataset_app.command("export")
def export(
    ref: Annotated[str, typer.Argument(metavar="NAME[:VERSION]", help="The latest version without one")],
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Where dataset.npz and dataset.json go")],
    cloud: CloudOption = None,
    token: TokenOption = None,
) -> None:
    """Write DIR/dataset.npz (for `loop stage evaluate --recent`) and DIR/dataset.json."""
    path = _ref(ref)
    if directory.exists() and not directory.is_dir():
        raise EdgefleetError(f"{directory} exists and is not a directory")
    client = CloudClient(cloud, token, timeout=300)
    content, headers = client.get_bytes(path + "/export")  # first: it refuses a dataset retention has thinned
    record = client.get(path + "?samples=true")
    fingerprint = {k.lower(): v for k, v in headers.items()}.get("x-edgefleet-fingerprint")
    if fingerprint != record["fingerprint"]:
        raise EdgefleetError(f"the export's fingerprint {fingerprint} is not the record's {record['fingerprint']}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for file, data in ((NPZ, content), (JSON_FILE, json.dumps(record, indent=2).encode())):
            temporary = directory / f".{file}.part"
            temporary.write_bytes(data)
            os.replace(temporary, directory / file)
    except OSError as err:
        raise EdgefleetError(f"cannot write the dataset to {directory}: {err.strerror or err}") from err
    out.print(f"{escape(record['name'])}:{record['version']} ({record['samples']} samples, {record['rows']} rows, "
              f"fingerprint {record['fingerprint'][:12]}) -> {escape(str(directory))}")
