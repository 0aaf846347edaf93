"""`edgefleet cloud mosquitto-config DIR`: the cloud's devices as a Mosquitto password file and ACL.

`register(cloud_app)` adds the command to the `cloud` group. Cloud modules are imported inside the
command, so the device-side CLI never loads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli.app import err_console, out
from edgefleet.core.errors import EdgefleetError

CLOUD_PASSWORD_NOTE = ("The cloud logs in to Mosquitto with this password, shown only now: run the service with "
                       "EDGEFLEET_MQTT_USERNAME={username} EDGEFLEET_MQTT_PASSWORD=<password>. Re-running this "
                       "command keeps it (it is read back from DIR/passwd) unless EDGEFLEET_MQTT_PASSWORD is set.")


def _existing_hash(passwd: Path, username: str) -> str | None:
    if not passwd.is_file():
        return None
    for line in passwd.read_text(encoding="utf-8").splitlines():
        name, _, hashed = line.partition(":")
        if name == username and hashed:
            return hashed
    return None


def mosquitto_config(
    directory: Annotated[Path, typer.Argument(help="Where to write passwd, acl and mosquitto.conf")],
    data: Annotated[Path | None, typer.Option("--data", help="Data directory of the cloud service (default "
                                                              "./edgefleet-data, or $EDGEFLEET_DATA_DIR)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy database URL (default: SQLite in --data)")] = None,
) -> None:
    """Write a Mosquitto password file and ACL for every registered device and the cloud itself."""
    from sqlalchemy import select

    from edgefleet.cloud.db import Device, make_engine, make_sessions
    from edgefleet.cloud.mqtt_auth import CLOUD_USERNAME, hash_password, new_password, write_mosquitto_config
    from edgefleet.cloud.settings import load_settings

    settings = load_settings(db_url=db, data_dir=data)
    url = settings.db_url or ""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise EdgefleetError(f"no cloud database at {url.removeprefix('sqlite:///')}: pass --data (or --db) "
                             f"of a cloud that has run")
    if settings.mqtt_username and settings.mqtt_username != CLOUD_USERNAME:
        raise EdgefleetError(f"EDGEFLEET_MQTT_USERNAME is {settings.mqtt_username!r}, but the ACL grants the cloud's "
                             f"rights to {CLOUD_USERNAME!r}; unset it or set it to {CLOUD_USERNAME}")
    engine = make_engine(url)
    try:
        with make_sessions(engine)() as session:
            devices = [(d.id, d.fleet, d.password_hash) for d in session.scalars(select(Device).order_by(Device.id))]
    finally:
        engine.dispose()

    new_cloud_password = None
    if settings.mqtt_password:
        cloud_hash = hash_password(settings.mqtt_password)
    else:
        cloud_hash = _existing_hash(Path(directory) / "passwd", CLOUD_USERNAME)
        if cloud_hash is None:
            new_cloud_password = new_password()
            cloud_hash = hash_password(new_cloud_password)
    paths = write_mosquitto_config(directory, devices, cloud_hash)
    out.print(f"wrote Mosquitto files for {len(devices)} device(s) and the cloud:", markup=False, highlight=False)
    for path in paths.values():
        out.print(f"  {path}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"add the lines of {paths['conf']} to mosquitto.conf, then reload Mosquitto (SIGHUP)",
              markup=False, highlight=False, soft_wrap=True)
    if new_cloud_password:
        out.print(f"cloud MQTT password: {new_cloud_password}", markup=False, highlight=False, soft_wrap=True)
        err_console.print(CLOUD_PASSWORD_NOTE.format(username=CLOUD_USERNAME), markup=False, highlight=False,
                          soft_wrap=True)


def register(cloud_app: typer.Typer) -> None:
    """Adds `mosquitto-config` to the `cloud` command group."""
    cloud_app.command("mosquitto-config")(mosquitto_config)
