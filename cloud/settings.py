"""The cloud service's settings: the one place the cloud reads environment variables.

Every field can be set as `EDGEFLEET_<FIELD>` (for example `EDGEFLEET_DB_URL`, `EDGEFLEET_MQTT_URL`) or
passed to the constructor, which wins over the environment (that is how the CLI's options apply).
`EDGEFLEET_TRUSTED_KEYS` takes paths separated by the OS path separator (':' on Linux) or a JSON list.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edgefleet.core.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.cloud.drift_settings import MonitorSettings
    from edgefleet.cloud.ops_settings import OpsLimits
    from edgefleet.cloud.performance_settings import PerformanceSettings

MiB = 1024 * 1024
KiB = 1024


class CloudSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    data_dir: Path = Path("./edgefleet-data")
    # None: a SQLite file in data_dir (filled in on validation, so db_url is always a URL afterwards).
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (CloudServer.url tells which)
    # None: run the embedded amqtt broker on mqtt_host:mqtt_port. Otherwise mqtt://host:port of an external one.
    mqtt_url: str | None = None
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=0, le=65535)
    # The cloud's MQTT secret for an external broker (EDGEFLEET_MQTT_PASSWORD, as `edgefleet cloud
    # mosquitto-config` printed it): each cloud client logs in as its own user (edgefleet-ingest,
    # edgefleet-rollouts) with a password derived from it. None: the clients connect without credentials.
    mqtt_password: str | None = Field(default=None, repr=False)
    # For an mqtts:// broker whose certificate a private CA signed: its PEM bundle (None: the system's store).
    mqtt_ca: Path | None = None
    # An ingest worker on NATS (`--mqtt-url nats://...` or `tls://...`, cloud/ingest_nats.py): what it sets on
    # the shared JetStream stream and consumer; None: the default at creation, then whatever the cluster has.
    nats_replicas: int | None = Field(default=None, ge=1, le=5)
    nats_max_bytes: int | None = Field(default=None, gt=0)
    nats_max_age_seconds: float | None = Field(default=None, gt=0)
    nats_ack_wait_seconds: float | None = Field(default=None, gt=0)
    # Keep a bcrypt hash of each device's password beside the PBKDF2 one, from registration on, for `cloud
    # nats-config` (NATS checks only bcrypt). About 1.5 ms a device at cost 4 (PBKDF2: 0.15 ms): a cloud that
    # only ever uses Mosquitto or the embedded broker may turn it off for bulk registration; devices registered
    # without it are left out of a NATS configuration, named.
    nats_device_hashes: bool = True
    # Retired: one username for all the cloud's clients let any of them be impersonated. Setting it is an error.
    mqtt_username: str | None = None
    # Public keys (.pub files or directories of them) the registry accepts bundles from.
    trusted_keys: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    max_bundle_bytes: int = Field(default=256 * MiB, gt=0)
    max_json_bytes: int = Field(default=1 * MiB, gt=0)  # any other request body (devices, deployments)
    telemetry_max_bytes: int = Field(default=256 * KiB, gt=0)
    # The drift monitor's global settings (cloud/drift.py explains the decision rule and its defaults);
    # each can be overridden per fleet or model through PUT /api/v1/drift/settings/... (cloud/drift_settings.py).
    drift_interval_seconds: float = Field(default=10.0, gt=0)
    drift_lookback_seconds: float = Field(default=300.0, gt=0)
    drift_min_samples: int = Field(default=100, ge=1)
    drift_alpha: float = Field(default=0.01, gt=0, lt=1)
    drift_psi_floor: float = Field(default=0.15, ge=0)
    drift_noise_multiplier: float = Field(default=5.0, ge=0)
    # The label-free accuracy alert (cloud/performance_monitor.py): how far the estimate may fall below what
    # the calibration expects (per fleet or model: PUT /api/v1/performance/settings/...); it runs on the
    # drift monitor's interval, and on its lookback and min_samples for the same fleet and model.
    performance_drop: float = Field(default=0.05, gt=0, lt=1)
    # Retention (cloud/retention.py): raw telemetry windows, then hourly roll-ups, then daily ones; drift
    # evaluations. The hourly roll-ups must be kept at least as long as the raw windows.
    retention_raw_days: float = Field(default=7.0, gt=0)
    retention_hourly_days: float = Field(default=90.0, gt=0)
    retention_evaluations_days: float = Field(default=30.0, gt=0)
    retention_interval_seconds: float = Field(default=3600.0, gt=0)
    # Data capture (cloud/capture_store.py): how long captured samples are kept unless a fleet's settings say
    # otherwise, and the largest upload a device may send (one batch of samples).
    capture_retention_days: float = Field(default=30.0, gt=0)
    max_capture_upload_bytes: int = Field(default=8 * MiB, gt=0)
    # The operations monitor (cloud/ops_monitor.py): seconds between its runs, and its global limits (None:
    # OpsLimits' default; the ranges are OpsLimits'); each limit can be overridden per fleet and model
    # through PUT /api/v1/ops/settings/... (cloud/ops_settings.py).
    ops_interval_seconds: float = Field(default=10.0, gt=0)
    ops_max_p99_ms: float | None = None
    ops_max_error_rate: float | None = None
    ops_min_requests: int | None = None
    ops_max_cpu_load: float | None = None
    ops_max_memory_used: float | None = None
    ops_min_disk_free_bytes: int | None = None
    ops_max_temperature_c: float | None = None
    ops_max_nonfinite_share: float | None = None
    ops_max_out_of_range_share: float | None = None
    ops_stuck_min_samples: int | None = None
    ops_lookback_seconds: float | None = None
    # Alert webhooks (cloud/webhooks.py): seconds before the second attempt (doubling), attempts in all.
    webhook_retry_seconds: float = Field(default=1.0, gt=0)
    webhook_max_attempts: int = Field(default=6, ge=1, le=30)
    # The API's base URL as devices reach it, for the signed download URLs in install commands. None: the
    # address the server listens on (CloudServer fills in the bound port); set it behind a proxy or NAT.
    public_url: str | None = None
    # HTTPS for the API (uvicorn's TLS): a PEM certificate chain and its private key, both or neither. None: plain
    # HTTP (behind a TLS-terminating proxy, set public_url to its https address).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # How long a signed download URL in an install command stays valid.
    download_url_ttl_seconds: int = Field(default=24 * 3600, gt=0)
    # How often the rollout engine advances the running deployments.
    rollout_interval_seconds: float = Field(default=0.5, gt=0)
    # How long a monitor or rollout worker's lease on a device shard or deployment lasts without renewal
    # (cloud/leases.py): a killed worker's work is taken over within this; renewals come every third of it.
    lease_seconds: float = Field(default=15.0, gt=0)
    # An Ed25519 private key (.key) the devices trust: with it, a deployment may install a version that is
    # not newer than a device's (the command carries a signed rollback authorization). Without it, such
    # deployments are refused.
    rollback_key: Path | None = None
    # Where the registry keeps bundle archives (cloud/bundle_store.py): None, the data directory; or
    # s3://BUCKET[/PREFIX] on s3_endpoint (None: AWS), credentials from the AWS_* variables. With S3 a device's
    # signed download is redirected to a presigned GET of the object unless s3_redirect is off (then the API
    # streams it).
    bundle_store: str | None = None
    s3_endpoint: str | None = None
    s3_redirect: bool = True
    # Which parts this process runs (cloud/roles.py): all, api, ingest, monitor or rollouts; and, for the
    # ingest role, the worker's name (its MQTT session is edgefleet-ingest-<worker>).
    role: str = "all"
    worker: str | None = None

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [p for p in text.split(os.pathsep) if p]
        return value

    @field_validator("mqtt_username")
    @classmethod
    def _retired_username(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(
                "EDGEFLEET_MQTT_USERNAME is no longer used: the cloud's MQTT clients log in as edgefleet-ingest and "
                "edgefleet-rollouts with passwords derived from EDGEFLEET_MQTT_PASSWORD; unset it and re-run "
                "`edgefleet cloud mosquitto-config DIR` with the same EDGEFLEET_MQTT_PASSWORD")
        return value

    @model_validator(mode="after")
    def _default_db_url(self) -> CloudSettings:
        if not self.db_url:
            self.db_url = f"sqlite:///{(self.data_dir / 'edgefleet.db').resolve()}"
        return self

    @field_validator("mqtt_ca")
    @classmethod
    def _loadable_ca(cls, value: Path | None) -> Path | None:
        if value is not None:
            from edgefleet.core.errors import EdgefleetError
            from edgefleet.core.tls import client_context

            try:
                client_context(value)
            except EdgefleetError as err:
                raise ValueError(str(err)) from err
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> CloudSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: HTTPS needs the certificate and its private key")
        if self.tls_cert is not None and self.tls_key is not None:
            from edgefleet.core.errors import EdgefleetError
            from edgefleet.core.tls import check_server_files

            try:
                check_server_files(self.tls_cert, self.tls_key)
            except EdgefleetError as err:
                raise ValueError(str(err)) from err
        return self

    @model_validator(mode="after")
    def _valid_ops_limits(self) -> CloudSettings:
        self.ops_limits()  # OpsSettingsError (a ValueError) names the limit and its range
        return self

    @field_validator("bundle_store")
    @classmethod
    def _store_url(cls, value: str | None) -> str | None:
        if value:
            from edgefleet.cloud.bundle_store import parse_store_url

            try:
                parse_store_url(value)
            except EdgefleetError as err:
                raise ValueError(str(err)) from err
        return value or None

    @field_validator("s3_endpoint")
    @classmethod
    def _endpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value or None

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/") if value else value

    @property
    def bundles_dir(self) -> Path:
        """The artifact store: bundles/<name>/<version>.tar.gz."""
        return self.data_dir / "bundles"

    @property
    def download_secret_path(self) -> Path:
        """Where an earlier release kept the key of the signed download URLs; it now lives in the database
        (cloud/signed_urls.py), which takes this file's key on its first start."""
        return self.data_dir / "download-url.key"

    def drift_monitor_settings(self) -> MonitorSettings:
        """The drift monitor's global settings, from the drift_* fields."""
        from edgefleet.cloud.drift import DriftThresholds
        from edgefleet.cloud.drift_settings import MonitorSettings

        thresholds = DriftThresholds(min_samples=self.drift_min_samples, alpha=self.drift_alpha,
                                     psi_floor=self.drift_psi_floor, noise_multiplier=self.drift_noise_multiplier)
        return MonitorSettings(thresholds, self.drift_lookback_seconds, self.drift_interval_seconds)

    def ops_limits(self) -> OpsLimits:
        """The operations monitor's global limits: OpsLimits' defaults with the ops_* fields that are set."""
        from edgefleet.cloud.ops_settings import OpsLimits, OpsSettingsError

        given = {name: getattr(self, f"ops_{name}") for name in OpsLimits.__dataclass_fields__}
        try:
            return OpsLimits().with_values(given)
        except OpsSettingsError as err:
            raise ValueError(f"ops_{err}") from err

    def performance_settings(self) -> PerformanceSettings:
        from edgefleet.cloud.performance_settings import PerformanceSettings

        return PerformanceSettings(drop=self.performance_drop)

    @property
    def broker_url(self) -> str:
        """The broker the service uses: the external one, or the embedded one's address."""
        return self.mqtt_url or f"mqtt://{self.mqtt_host}:{self.mqtt_port}"


def load_settings(**overrides: object) -> CloudSettings:
    """Settings from the environment with the given (non-None) overrides on top; a bad value raises
    EdgefleetError naming the setting."""
    try:
        return CloudSettings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in err.errors())
        raise EdgefleetError(f"invalid cloud settings (options or EDGEFLEET_* variables): {problems}") from err
