"""Cloud commands: `edgefleet cloud up` runs the companion service, `edgefleet cloud token` makes an admin
token, `edgefleet cloud migrate` upgrades the database's schema, `edgefleet cloud service` writes a systemd
unit for a scale-out role. The cloud modules are imported inside the
commands, so the device-side CLI never loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli import mqtt_commands, nats_commands
from edgefleet.cli.app import TrustOption, app, err_console, out
from edgefleet.core import config
from edgefleet.core.errors import EdgefleetError

cloud_app = typer.Typer(no_args_is_help=True, help="The cloud companion service: registry, fleet, ingest, drift.")
app.add_typer(cloud_app, name="cloud")
mqtt_commands.register(cloud_app)
nats_commands.register(cloud_app)

DataOption = Annotated[Path | None, typer.Option("--data", help="Data directory (default ./edgefleet-data, "
                                                                  "or $EDGEFLEET_DATA_DIR)")]
DbOption = Annotated[str | None, typer.Option("--db", help="SQLAlchemy database URL (default: SQLite in --data)")]
DRIFT_PANEL = "Drift monitor (global; per fleet or model: PUT /api/v1/drift/settings/...)"
RETENTION_PANEL = "Retention (raw windows -> hourly -> daily roll-ups)"
PERFORMANCE_PANEL = "Accuracy alert (global; per fleet or model: PUT /api/v1/performance/settings)"
OPS_PANEL = "Ops monitor (global; per fleet or model: PUT /api/v1/ops/settings/...)"
TOKEN_NOTE = ("This token is shown only now; the cloud stores only its hash. Keep it somewhere safe and send it "
              "as 'Authorization: Bearer <token>'. Make more with `edgefleet cloud token`.")


@cloud_app.command("up")
def up(
    db: DbOption = None,
    mqtt_url: Annotated[str | None, typer.Option("--mqtt-url", help="External broker, mqtt://host:port or "
                                                                     "mqtts://host:port (TLS; default: run the "
                                                                     "embedded broker); with --role ingest also "
                                                                     "nats://host:4222[,...]: a NATS cluster read "
                                                                     "from JetStream")] = None,
    data: DataOption = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080; 0 picks a free one)")] = None,
    host: Annotated[str | None, typer.Option(help="HTTP address to listen on (default 127.0.0.1)")] = None,
    trust: TrustOption = None,
    public_url: Annotated[str | None, typer.Option(help="The API's URL as devices reach it (for update "
                                                        "downloads; default: the bound address)")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Serve the API over HTTPS with this PEM certificate chain "
                                                       "(with --tls-key)")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="The private key of --tls-cert (PEM)")] = None,
    mqtt_ca: Annotated[Path | None, typer.Option(help="PEM file of the CA that signed an mqtts:// broker's "
                                                      "certificate (default: the system's CA store)")] = None,
    rollback_key: Annotated[Path | None, typer.Option(help="Private key that signs rollback authorizations, so "
                                                           "a deployment may install an older version")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="Where the registry keeps bundles: s3://BUCKET/PREFIX, the prefix optional (credentials "
                        "from the AWS_* variables; default: the data directory)")] = None,
    s3_endpoint: Annotated[str | None, typer.Option(help="The S3 API's URL for --store (MinIO, Ceph; default: "
                                                         "AWS)")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    loop: Annotated[list[Path] | None, typer.Option(
        "--loop", help="A retraining policy (TOML) this cloud runs whenever its trigger fires (an open drift or "
                       "performance alert for its model and fleet, once per alert; or its schedule); "
                       "repeatable")] = None,
    role: Annotated[str | None, typer.Option(
        help="What this process runs: all (default: everything, one command), api (HTTP only, stateless "
             "replicas), ingest (MQTT ingest, shared subscription), monitor (drift, accuracy, ops monitors) or "
             "rollouts (rollout engine); every role but all needs a PostgreSQL --db")] = None,
    worker: Annotated[str | None, typer.Option(
        help="With --role ingest (required) or rollouts: this worker's name, unique among its role's workers and "
             "the same after a restart (its MQTT users: edgefleet-ingest-NAME; edgefleet-rollouts-NAME and "
             "edgefleet-labels-NAME)")] = None,
    drift_interval: Annotated[float | None, typer.Option(
        help="Seconds between drift evaluations (default 10)", rich_help_panel=DRIFT_PANEL)] = None,
    drift_lookback: Annotated[float | None, typer.Option(
        help="Seconds of telemetry each evaluation covers (default 300); windows that arrive later are "
             "evaluated late, in the period they describe", rich_help_panel=DRIFT_PANEL)] = None,
    drift_min_samples: Annotated[int | None, typer.Option(
        help="Fewer samples than this in a signal: no verdict (default 100)", rich_help_panel=DRIFT_PANEL)] = None,
    drift_alpha: Annotated[float | None, typer.Option(
        help="Family-wise significance level per signal group (default 0.01)", rich_help_panel=DRIFT_PANEL)] = None,
    drift_psi_floor: Annotated[float | None, typer.Option(
        help="PSI a drift must exceed whatever the sample size (default 0.15)", rich_help_panel=DRIFT_PANEL)] = None,
    drift_noise_multiplier: Annotated[float | None, typer.Option(
        help="PSI threshold in units of its expected value under no drift (default 5)",
        rich_help_panel=DRIFT_PANEL)] = None,
    retention_raw_days: Annotated[float | None, typer.Option(
        help="Days raw telemetry windows are kept before they are rolled up by hour (default 7)",
        rich_help_panel=RETENTION_PANEL)] = None,
    retention_hourly_days: Annotated[float | None, typer.Option(
        help="Days hourly roll-ups are kept before they are rolled up by day (default 90)",
        rich_help_panel=RETENTION_PANEL)] = None,
    retention_evaluations_days: Annotated[float | None, typer.Option(
        help="Days drift evaluations are kept (default 30)", rich_help_panel=RETENTION_PANEL)] = None,
    performance_drop: Annotated[float | None, typer.Option(
        help="Alert when the accuracy estimated without labels falls this far below what the calibration "
             "expects (default 0.05; closes within half of it)", rich_help_panel=PERFORMANCE_PANEL)] = None,
    ops_interval: Annotated[float | None, typer.Option(
        help="Seconds between operations checks (default 10)", rich_help_panel=OPS_PANEL)] = None,
    ops_lookback: Annotated[float | None, typer.Option(
        help="Seconds of telemetry each check covers (default 300)", rich_help_panel=OPS_PANEL)] = None,
    ops_max_p99_ms: Annotated[float | None, typer.Option(
        help="p99 latency limit in ms (default 500)", rich_help_panel=OPS_PANEL)] = None,
    ops_max_error_rate: Annotated[float | None, typer.Option(
        help="Error-rate limit, 0-1 (default 0.05)", rich_help_panel=OPS_PANEL)] = None,
    ops_min_requests: Annotated[int | None, typer.Option(
        help="Fewer requests in the lookback: no latency or error-rate verdict (default 20)",
        rich_help_panel=OPS_PANEL)] = None,
    ops_max_cpu_load: Annotated[float | None, typer.Option(
        help="Load-average limit (default: not checked)", rich_help_panel=OPS_PANEL)] = None,
    ops_max_memory_used: Annotated[float | None, typer.Option(
        help="Memory-used share limit, 0-1 (default 0.95)", rich_help_panel=OPS_PANEL)] = None,
    ops_min_disk_free_bytes: Annotated[int | None, typer.Option(
        help="Free bytes the data directory's disk must keep (default 100 MiB)", rich_help_panel=OPS_PANEL)] = None,
    ops_max_temperature: Annotated[float | None, typer.Option(
        help="Temperature limit in °C (default 80)", rich_help_panel=OPS_PANEL)] = None,
    ops_max_nonfinite_share: Annotated[float | None, typer.Option(
        help="Data quality: share of NaN/inf values per input, 0-1 (default 0.01)", rich_help_panel=OPS_PANEL)] = None,
    ops_max_out_of_range_share: Annotated[float | None, typer.Option(
        help="Data quality: share of values outside the reference range, 0-1 (default 0.05)",
        rich_help_panel=OPS_PANEL)] = None,
    ops_stuck_min_samples: Annotated[int | None, typer.Option(
        help="Data quality: samples a varying input must stay constant to count as stuck (default 20)",
        rich_help_panel=OPS_PANEL)] = None,
) -> None:
    """Run the cloud service (API, MQTT broker, ingest, drift monitor, rollouts), or one --role of it, until
    Ctrl+C or SIGTERM.

    The --drift-*, --performance-drop and --ops-* options are global; PUT /api/v1/drift/settings/fleets/F
    (or /models/M, /fleets/F/models/M; likewise /performance/settings and /ops/settings) overrides them for
    one fleet or model. A value out of range exits with code 2 and names the setting."""
    import logging

    from edgefleet.cloud.server import CloudServer
    from edgefleet.cloud.settings import load_settings

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise EdgefleetError(f"--log-level: expected debug, info, warning or error, got {log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        logging.getLogger("transitions").setLevel(logging.WARNING)  # amqtt's state machine, chatty at INFO
        logging.getLogger("alembic").setLevel(logging.WARNING)  # the schema check's plugin and context lines
    trusted = list(trust or config.trusted_key_paths()) or None
    settings = load_settings(db_url=db, mqtt_url=mqtt_url, data_dir=data, port=port, host=host, trusted_keys=trusted,
                             public_url=public_url, rollback_key=rollback_key, drift_interval_seconds=drift_interval,
                             tls_cert=tls_cert, tls_key=tls_key, mqtt_ca=mqtt_ca,
                             drift_lookback_seconds=drift_lookback, drift_min_samples=drift_min_samples,
                             drift_alpha=drift_alpha, drift_psi_floor=drift_psi_floor,
                             drift_noise_multiplier=drift_noise_multiplier, retention_raw_days=retention_raw_days,
                             retention_hourly_days=retention_hourly_days,
                             retention_evaluations_days=retention_evaluations_days,
                             performance_drop=performance_drop, ops_interval_seconds=ops_interval,
                             ops_lookback_seconds=ops_lookback, ops_max_p99_ms=ops_max_p99_ms,
                             ops_max_error_rate=ops_max_error_rate, ops_min_requests=ops_min_requests,
                             ops_max_cpu_load=ops_max_cpu_load, ops_max_memory_used=ops_max_memory_used,
                             ops_min_disk_free_bytes=ops_min_disk_free_bytes, ops_max_temperature_c=ops_max_temperature,
                             ops_max_nonfinite_share=ops_max_nonfinite_share,
                             ops_max_out_of_range_share=ops_max_out_of_range_share,
                             ops_stuck_min_samples=ops_stuck_min_samples, role=role, worker=worker,
                             bundle_store=store, s3_endpoint=s3_endpoint)
    from edgefleet.cloud.loop.policy import load_policy

    policies = [load_policy(path) for path in loop or []]  # a bad policy is refused before anything starts
    server = CloudServer(settings).start()
    watchers = []
    try:
        if policies:
            from edgefleet.cloud.loop.trigger import serve_policies

            watchers = serve_policies(server, policies)
            out.print("loop: " + ", ".join(f"{p.name} ({p.trigger})" for p in policies), markup=False,
                      highlight=False, soft_wrap=True)
        if settings.role != "all":
            out.print(f"role: {settings.role}", markup=False, highlight=False, soft_wrap=True)
        if server.serves_http:
            out.print(f"edgefleet cloud API: {server.url}", markup=False, highlight=False, soft_wrap=True)
        if settings.mqtt_url or server.broker is not None:  # a monitor without --mqtt-url uses no broker
            broker = "external" if settings.mqtt_url else "embedded"
            out.print(f"MQTT broker ({broker}): {server.broker_url}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"data: {settings.data_dir.resolve()}", markup=False, highlight=False, soft_wrap=True)
        if settings.mqtt_url and not settings.mqtt_password:
            err_console.print("warning: no EDGEFLEET_MQTT_PASSWORD: the cloud's MQTT clients connect to the external "
                              "broker without credentials (see `edgefleet cloud mosquitto-config`)",
                              markup=False, highlight=False, soft_wrap=True)
        if server.serves_http and not settings.trusted_keys:
            err_console.print("warning: no trusted keys (--trust KEY.pub): the registry will refuse every bundle",
                              markup=False, highlight=False, soft_wrap=True)
        if server.new_admin_token:
            _print_token(server.new_admin_token)
        out.print("running; Ctrl+C or SIGTERM stops it", markup=False, highlight=False, soft_wrap=True)
    except BaseException:
        server.stop()
        raise
    server.run_forever()
    for watcher in watchers:
        watcher.stop()
    out.print("stopped", markup=False, highlight=False, soft_wrap=True)


@cloud_app.command("migrate")
def migrate(
    database: Annotated[str | None, typer.Option("--database", "--db", help="SQLAlchemy database URL (default: "
                                                                            "SQLite in --data)")] = None,
    data: DataOption = None,
    to: Annotated[str, typer.Option("--to", help="Schema revision to upgrade to")] = "head",
) -> None:
    """Upgrade the database's schema to this release's (or --to REV). `cloud up` refuses an older schema, and
    upgrades nothing itself: stop every cloud process on the database and back it up first."""
    from edgefleet.cloud.db import open_engine
    from edgefleet.cloud.schema import migrate as upgrade
    from edgefleet.cloud.settings import load_settings

    settings = load_settings(db_url=database, data_dir=data)
    if database is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = open_engine(settings.db_url)
    try:
        before, after = upgrade(engine, to)
    finally:
        engine.dispose()
    if before == after:
        out.print(f"schema at revision {after} already", markup=False, highlight=False)
    else:
        out.print(f"schema upgraded from revision {before or 'none'} to {after}", markup=False, highlight=False)


@cloud_app.command("service")
def service(
    role: Annotated[str, typer.Option(help="api, ingest, monitor or rollouts (not all: one process, no scale-out)")],
    user: Annotated[str, typer.Option(help="Unprivileged user the processes run as")] = "edgefleet",
    env_file: Annotated[Path, typer.Option("--env-file", help="The settings and secrets the units read "
                                                              "(EDGEFLEET_DB_URL, EDGEFLEET_MQTT_PASSWORD, ...)")]
    = Path("/etc/edgefleet/cloud.env"),
    output: Annotated[Path | None, typer.Option("--out", help="Write the unit here (default: print it)")] = None,
) -> None:
    """Write a systemd template unit, edgefleet-ROLE@.service, that runs one role's processes as a hardened
    service, restarted always: an instance's name is its --worker (ingest, rollouts) or its --port (api)."""
    from edgefleet.cloud.service_unit import example_env, install_hint, render_unit

    unit = render_unit(role, user=user, env_file=env_file)
    if output is None:
        typer.echo(unit, nl=False)
        return
    if not output.parent.is_dir():
        raise EdgefleetError(f"--out: there is no directory {output.parent}")
    output.write_text(unit)
    out.print(f"wrote {output}; its settings go in {env_file.absolute()} (root's, mode 0600: systemd reads it "
              f"before it starts the process as {user}), for example:", markup=False, highlight=False, soft_wrap=True)
    typer.echo(example_env(role))  # unwrapped: copied as is
    out.print("then, as root:", markup=False)
    typer.echo(install_hint(output, role, user))


@cloud_app.command("token")
def token(
    data: DataOption = None,
    db: DbOption = None,
    name: Annotated[str, typer.Option(help="A name to tell tokens apart")] = "admin",
    viewer: Annotated[bool, typer.Option("--viewer", help="A read-only token: signs in to the dashboard, "
                                                          "cannot approve or abort; the API refuses it")] = False,
) -> None:
    """Create another API token (printed once): an admin token, or a read-only one with --viewer."""
    from edgefleet.cloud.auth import ADMIN, VIEWER, create_token
    from edgefleet.cloud.db import make_engine, make_sessions
    from edgefleet.cloud.settings import load_settings

    settings = load_settings(db_url=db, data_dir=data)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    try:
        role = VIEWER if viewer else ADMIN
        _print_token(create_token(make_sessions(engine), name, role), role)
    finally:
        engine.dispose()


def _print_token(value: str, role: str = "admin") -> None:
    out.print(f"{role} token: {value}", markup=False, highlight=False, soft_wrap=True)
    out.print(TOKEN_NOTE, markup=False, highlight=False, soft_wrap=True)
