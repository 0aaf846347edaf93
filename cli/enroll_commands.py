"""Provisioning at fleet scale (cloud/api/enrollment.py): `edgefleet enroll-token create|list|revoke` for the
admin, `edgefleet device enroll` for a device's first start, `edgefleet device register --csv` for a batch,
`edgefleet device revoke` for a device that must lose its access.

A device image carries the enrollment token, the bundle it starts with and the release key; on first
start `device enroll` registers it and writes its device.toml (mode 0600: it holds the MQTT password),
after which `device run` (or the unit of `device service`) takes over.
"""

from __future__ import annotations

import csv
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli.app import app, out
from edgefleet.cli.fleet_commands import CloudOption, TokenOption, device_app
from edgefleet.core.api_client import CloudClient
from edgefleet.core.errors import EdgefleetError

token_app = typer.Typer(no_args_is_help=True, help="Enrollment tokens: devices register themselves with one.")
app.add_typer(token_app, name="enroll-token")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BULK_BATCH = 1000  # the cloud's cap per request (MAX_BULK)


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d' or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise EdgefleetError(f"--expires: expected a duration like 90s, 30m, 12h or 7d, got {text!r}")
    return float(match[1]) * _UNITS[match[2] or "s"]


@token_app.command("create")
def create(
    fleet: Annotated[str, typer.Option(help="Fleet the enrolled devices join")],
    group: Annotated[str | None, typer.Option(help="Group within the fleet")] = None,
    uses: Annotated[int, typer.Option(min=1, help="How many devices may enroll with it")] = 1,
    expires: Annotated[str, typer.Option(help="Lifetime: 90s, 30m, 12h, 7d")] = "7d",
    cloud: CloudOption = None, token: TokenOption = None,
) -> None:
    """Make a token; it is printed once (the cloud keeps only its hash)."""
    body = {"fleet": fleet, "group": group, "max_uses": uses, "expires_in_seconds": parse_duration(expires)}
    made = CloudClient(cloud, token).post_json("/api/v1/enrollment-tokens", body)
    out.print(f"enrollment token {made['id']} for fleet {made['fleet']}"
              + (f", group {made['group']}" if made["group"] else "")
              + f": {made['max_uses']} use(s), expires {_when(made['expires_at'])}", markup=False)
    typer.echo(made["token"])


@token_app.command("list")
def list_tokens(cloud: CloudOption = None, token: TokenOption = None) -> None:
    """Every token with its uses and state (active, expired, revoked, used up)."""
    rows = CloudClient(cloud, token).get("/api/v1/enrollment-tokens")
    table = Table("id", "fleet", "group", "uses", "expires", "state", title="enrollment tokens")
    for row in rows:
        table.add_row(str(row["id"]), escape(row["fleet"]), escape(row["group"] or "-"),
                      f"{row['uses']}/{row['max_uses']}", _when(row["expires_at"]), row["state"])
    out.print(table)


@token_app.command("revoke")
def revoke(token_id: Annotated[int, typer.Argument(help="Token id (from `enroll-token list`)")],
           cloud: CloudOption = None, token: TokenOption = None) -> None:
    """Stop further enrollments with the token (devices enrolled with it keep their credentials)."""
    row = CloudClient(cloud, token).delete(f"/api/v1/enrollment-tokens/{token_id}")
    out.print(f"enrollment token {row['id']} is {row['state']} ({row['uses']} device(s) enrolled with it)")


@device_app.command("enroll")
def enroll(
    token: Annotated[str, typer.Option("--token", help="Enrollment token (efe_...)")],
    bundle: Annotated[Path, typer.Option(help="Bundle the device serves until its first deployment")],
    trusted_key: Annotated[list[Path], typer.Option("--trusted-key", help="Release public key (repeatable)")],
    output: Annotated[Path, typer.Option("--out", help="device.toml to write")] = Path("device.toml"),
    device_id: Annotated[str | None, typer.Option("--id", help="Id to ask for (default: the cloud picks)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Outbox and model slots (default: beside --out)")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Local HTTP port")] = 8000,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out")] = False,
    cloud: CloudOption = None,
    ca: Annotated[Path | None, typer.Option(help="PEM file of the CA that signed the cloud's (and an mqtts:// "
                                                 "broker's) certificate, for a private CA; written to "
                                                 "device.toml")] = None,
) -> None:
    """Register this device with an enrollment token and write its device.toml with its own credentials."""
    if output.exists() and not force:
        raise EdgefleetError(f"{output} exists: this device is enrolled already (pass --force to enroll again)")
    for key in trusted_key:
        if not key.is_file():
            raise EdgefleetError(f"--trusted-key {key} does not exist")
    client = CloudClient(cloud, token, ca=ca)
    got = client.post_json("/api/v1/enroll", {"id": device_id})
    data = data_dir or output.resolve().parent / f"edgefleet-device-{got['id']}"
    text = device_toml(got, client.url, bundle.resolve(), [k.resolve() for k in trusted_key], data.resolve(), port,
                       ca.resolve() if ca is not None else None)
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    out.print(f"enrolled as {got['id']} in fleet {got['fleet']}; wrote {output} (its MQTT password is in it)",
              markup=False, highlight=False)


def device_toml(got: dict, cloud_url: str, bundle: Path, keys: list[Path], data_dir: Path, port: int,
                ca: Path | None = None) -> str:
    """The device.toml of an enrolled device (strings as JSON strings, which TOML reads as basic strings)."""
    q = json.dumps
    return "\n".join([
        "[device]", f"id = {q(got['id'])}", f"fleet = {q(got['fleet'])}", f"data_dir = {q(str(data_dir))}", "",
        "[model]", f"bundle = {q(str(bundle))}", f"trusted_keys = [{', '.join(q(str(k)) for k in keys)}]", "",
        "[mqtt]", f"url = {q(got['mqtt_url'])}", f"username = {q(got['mqtt']['username'])}",
        f"password = {q(got['mqtt']['password'])}",
        *([f"ca = {q(str(ca))}"] if ca is not None else []), "",  # for an mqtts:// broker with the same CA
        "[cloud]", f"url = {q(cloud_url)}",  # HTTPS uploads (captured samples) with the same credentials
        *([f"ca = {q(str(ca))}"] if ca is not None else []), "",
        "[http]", f"port = {port}", "",
    ])


@device_app.command("register")
def register_csv(
    csv_file: Annotated[Path, typer.Option("--csv", help="Devices to register: columns id, fleet[, group]")],
    output: Annotated[Path, typer.Option("--out", help="CSV of the credentials to write (mode 0600)")],
    cloud: CloudOption = None, token: TokenOption = None,
) -> None:
    """Register many devices at once (in batches of 1,000, each all or none) and write their credentials."""
    devices = read_devices(csv_file)
    client = CloudClient(cloud, token, timeout=300)
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "fleet", "group", "mqtt_username", "mqtt_password"])
        for start in range(0, len(devices), BULK_BATCH):
            batch = devices[start:start + BULK_BATCH]
            for got in client.post_json("/api/v1/devices/bulk", {"devices": batch}):
                writer.writerow([got["id"], got["fleet"], got["group"] or "", got["mqtt"]["username"],
                                 got["mqtt"]["password"]])
            handle.flush()
            out.print(f"registered {min(start + BULK_BATCH, len(devices))}/{len(devices)}", markup=False)
    out.print(f"wrote {output}", markup=False, highlight=False)


@device_app.command("revoke")
def revoke_device(device_id: Annotated[str, typer.Argument(help="Device to revoke")],
                  cloud: CloudOption = None, token: TokenOption = None) -> None:
    """Revoke a device's credentials: the embedded broker refuses it and closes its connection at once."""
    got = CloudClient(cloud, token).delete(f"/api/v1/devices/{device_id}")
    out.print(f"device {got['id']} revoked; with Mosquitto, re-run `edgefleet cloud mosquitto-config` and "
              f"send it SIGHUP (Mosquitto keeps a connected client until it reconnects); with NATS, re-run "
              f"`edgefleet cloud nats-config` and reload every node (closes its connection)", markup=False)


def read_devices(path: Path) -> list[dict]:
    """The CSV's rows as registration requests; one line naming the row for anything malformed."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise EdgefleetError(f"--csv {path}: cannot read it ({err})") from err
    if not rows:
        raise EdgefleetError(f"--csv {path}: no devices (expected a header id,fleet[,group] and one row per device)")
    if not {"id", "fleet"} <= set(rows[0]):
        raise EdgefleetError(f"--csv {path}: the header must name the columns id and fleet (and optionally group)")
    devices = []
    for line, row in enumerate(rows, start=2):
        if not row.get("id") or not row.get("fleet"):
            raise EdgefleetError(f"--csv {path}, line {line}: id and fleet must not be empty")
        devices.append({"id": row["id"].strip(), "fleet": row["fleet"].strip(),
                        "group": (row.get("group") or "").strip() or None})
    return devices


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
