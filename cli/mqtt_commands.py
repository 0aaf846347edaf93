"""`edgefleet cloud mosquitto-config DIR`: the cloud's devices and its own clients as a Mosquitto configuration.

`register(cloud_app)` adds the command to the `cloud` group. Cloud modules are imported inside the
command, so the device-side CLI never loads them.

The cloud's clients (edgefleet-ingest, edgefleet-rollouts) get passwords derived from one cloud secret:
`EDGEFLEET_MQTT_PASSWORD` if set, else the hashes already in DIR/passwd are kept, else a new secret is
made and printed once (the service then runs with EDGEFLEET_MQTT_PASSWORD=<secret>).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from edgefleet.cli.app import err_console, out
from edgefleet.core.errors import EdgefleetError

SECRET_NOTE = ("The cloud's MQTT clients ({names}) log in with passwords derived from this secret, shown only now: "
               "run the service with EDGEFLEET_MQTT_PASSWORD=<secret>. Re-running this command keeps their "
               "passwords (read back from DIR/passwd) unless EDGEFLEET_MQTT_PASSWORD is set.")


def _existing_hashes(passwd: Path, usernames: list[str]) -> dict[str, str]:
    if not passwd.is_file():
        return {}
    found = {}
    for line in passwd.read_text(encoding="utf-8").splitlines():
        name, _, hashed = line.partition(":")
        if name in usernames and hashed:
            found[name] = hashed
    return found


def _cloud_hashes(directory: Path, secret: str | None, workers: list[str],
                  rollouts_workers: list[str]) -> tuple[dict[str, str], str | None]:
    """The cloud clients' password hashes (the workers' included), and the secret if a new one was made."""
    from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS, cloud_password, hash_password, new_cloud_secret, worker_clients

    names = [*CLOUD_CLIENTS, *worker_clients(workers, rollouts_workers)]
    new_secret = None
    if not secret:
        kept = _existing_hashes(directory / "passwd", names)
        if len(kept) == len(names):
            return kept, None
        if kept:
            missing = ", ".join(name for name in names if name not in kept)
            raise EdgefleetError(f"{directory / 'passwd'} has no password for {missing}: set EDGEFLEET_MQTT_PASSWORD "
                                 f"to the cloud's MQTT secret and run the command again")
        secret = new_secret = new_cloud_secret()
    return {name: hash_password(cloud_password(secret, name)) for name in names}, new_secret


def registered_devices(url: str, row: Callable[[Any], tuple]) -> list[tuple]:
    """`row(device)` of every device not revoked, by id, from the cloud's database at `url`."""
    from sqlalchemy import select

    from edgefleet.cloud.db import Device, make_engine, make_sessions
    from edgefleet.cloud.schema import check_revision, current_revision

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise EdgefleetError(f"no cloud database at {url.removeprefix('sqlite:///')}: pass --data (or --db) "
                             f"of a cloud that has run")
    engine = make_engine(url)
    try:
        with engine.connect() as connection:  # an older schema: one line naming `cloud migrate`, not an SQL error
            check_revision(current_revision(connection), engine.url.render_as_string(hide_password=True))
        with make_sessions(engine)() as session:
            return [row(d) for d in
                    session.scalars(select(Device).where(Device.revoked_at.is_(None)).order_by(Device.id))]
    finally:
        engine.dispose()


def mosquitto_config(
    directory: Annotated[Path, typer.Argument(help="Where to write passwd, acl and mosquitto.conf")],
    data: Annotated[Path | None, typer.Option("--data", help="Data directory of the cloud service (default "
                                                              "./edgefleet-data, or $EDGEFLEET_DATA_DIR)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="SQLAlchemy database URL (default: SQLite in --data)")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port Mosquitto listens on")] = 1883,
    bind: Annotated[str, typer.Option(help="Address Mosquitto listens on ('' for every interface)")] = "127.0.0.1",
    persistence_dir: Annotated[Path | None, typer.Option(help="Where Mosquitto keeps its sessions and queued "
                                                               "messages (default DIR/persistence)")] = None,
    ingest_worker: Annotated[list[str] | None, typer.Option(
        "--ingest-worker", help="An ingest worker's name (`cloud up --role ingest --worker NAME`); repeat for each: "
                                "each logs in as edgefleet-ingest-NAME with the ingest's rights")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS only on the listener with this PEM certificate chain "
                                                       "(with --tls-key; devices then use mqtts://)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The private key of --tls-cert (PEM)")] = None,
    rollouts_worker: Annotated[list[str] | None, typer.Option(
        "--rollouts-worker", help="A rollouts worker's name (`cloud up --role rollouts --worker NAME`); repeat for "
                                  "each: its engine and label forwarder log in as edgefleet-rollouts-NAME and "
                                  "edgefleet-labels-NAME")] = None,
) -> None:
    """Write a complete Mosquitto configuration (passwd, acl, mosquitto.conf) for every registered device and
    the cloud's own clients, with persistence on and client ids bound to usernames."""
    from edgefleet.cloud.mqtt_auth import Listener, write_mosquitto_config
    from edgefleet.cloud.roles import check_worker
    from edgefleet.cloud.settings import load_settings
    from edgefleet.core.tls import check_server_files

    settings = load_settings(db_url=db, data_dir=data)
    devices = registered_devices(settings.db_url or "", lambda d: (d.id, d.fleet, d.password_hash))

    workers = list(dict.fromkeys(ingest_worker or ()))
    rollouts_workers = list(dict.fromkeys(rollouts_worker or ()))
    for name in workers + rollouts_workers:
        check_worker(name)
    cloud_hashes, new_secret = _cloud_hashes(Path(directory), settings.mqtt_password, workers, rollouts_workers)
    if (tls_cert is None) != (tls_key is None):
        raise EdgefleetError("--tls-cert and --tls-key go together")
    if tls_cert is not None and tls_key is not None:
        check_server_files(tls_cert, tls_key)
    listener = Listener(port=port, bind=bind or None, persistence_dir=persistence_dir, tls_cert=tls_cert,
                        tls_key=tls_key)
    paths = write_mosquitto_config(directory, devices, cloud_hashes, listener, workers, rollouts_workers)
    report_written(f"Mosquitto files for {len(devices)} device(s)", paths,
                   f"run: mosquitto -c {paths['conf']} (after a re-run, reload it with SIGHUP)", new_secret)


def report_written(what: str, paths: dict[str, Path], run: str, new_secret: str | None,
                   warning: str | None = None) -> None:
    """What a broker-configuration command wrote, how to run it, a warning, and a new cloud secret (once)."""
    from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS

    out.print(f"wrote {what} and the cloud:", markup=False, highlight=False)
    for path in paths.values():
        out.print(f"  {path}", markup=False, highlight=False, soft_wrap=True)
    out.print(run, markup=False, highlight=False, soft_wrap=True)
    if warning:
        err_console.print(warning, markup=False, highlight=False, soft_wrap=True)
    if new_secret:
        out.print(f"cloud MQTT secret: {new_secret}", markup=False, highlight=False, soft_wrap=True)
        err_console.print(SECRET_NOTE.format(names=", ".join(CLOUD_CLIENTS)), markup=False, highlight=False,
                          soft_wrap=True)


def register(cloud_app: typer.Typer) -> None:
    """Adds `mosquitto-config` to the `cloud` command group."""
    cloud_app.command("mosquitto-config")(mosquitto_config)
