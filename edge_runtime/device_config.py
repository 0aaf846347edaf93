"""device.toml: what one device agent serves, whom it trusts, where it reports.

    [device]
    id = "pi-07"
    fleet = "lab"
    data_dir = "/var/lib/edgefleet"          # outbox and model slots
    slice = "site-a"                         # optional: the slice of requests that name none (core/slices.py)

    [model]
    bundle = "/var/lib/edgefleet/digits.tar.gz"
    trusted_keys = ["/etc/edgefleet/release.pub"]
    backends = ["onnxruntime"]               # optional; without it, the bundle's own order: the backends
    threads = 1                              # of its CPU artifacts (edge_runtime/backends, default_backends)

    [mqtt]                                     # optional: no section, no reporting
    url = "mqtt://cloud.example:1883"           # or mqtts://cloud.example:8883 (TLS)
    failover = ["mqtt://cloud-b.example:1883"]  # optional: other nodes of a clustered broker, tried in turn
    ca = "/etc/edgefleet/ca.pem"                # optional: trust this CA for mqtts:// (a private CA)
    username = "pi-07"
    password = "..."

    [telemetry]
    window_seconds = 60
    outbox_max_bytes = 16777216

    [http]
    host = "127.0.0.1"
    port = 8000
    max_body_bytes = 1048576

    [cloud]                                    # optional: data capture (edge_runtime/capture.py) needs it
    url = "https://cloud.example"            # the cloud's HTTP API; credentials: [mqtt]'s unless given here
    poll_seconds = 60                        # how often the fleet's capture settings are read
    upload_seconds = 10
    max_capture_bytes = 268435456            # the device's ceiling on its capture spool, whatever the fleet asks
    ca = "/etc/edgefleet/ca.pem"             # optional: trust this CA for https (uploads, update downloads)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.core.errors import EdgefleetError
from edgefleet.core.slices import NAME_RULE, check_name
from edgefleet.core.tls import client_context
from edgefleet.core.topics import TopicError, check_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 devices
    import tomli as tomllib


@dataclass(frozen=True)
class MqttConfig:
    url: str
    username: str | None = None
    password: str | None = None
    failover: tuple[str, ...] = ()  # further broker URLs: a failed connect moves to the next (edge_runtime/mqtt.py)
    ca: Path | None = None  # PEM bundle trusted for mqtts:// (a private CA); None: the system's CA store


@dataclass(frozen=True)
class CloudConfig:
    """The cloud's HTTP API, for data capture: settings are read and samples uploaded with these credentials."""

    url: str
    username: str | None = None
    password: str | None = None
    poll_seconds: float = 60.0
    upload_seconds: float = 10.0
    max_capture_bytes: int = 256 * 2**20
    ca: Path | None = None  # PEM bundle trusted for https (a private CA); None: the system's CA store


@dataclass(frozen=True)
class DeviceConfig:
    device: str
    fleet: str
    bundle: Path
    trusted_keys: tuple[Path, ...]
    data_dir: Path
    backends: tuple[str, ...] = ()  # empty: each bundle's own order (edge_runtime/backends, default_backends)
    threads: int | None = None
    mqtt: MqttConfig | None = None
    window_seconds: float = 60.0
    outbox_max_bytes: int = 16 * 2**20
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    max_body_bytes: int = 2**20
    slice: str | None = None  # the default slice of this device's requests (edge_runtime/slices.py)
    cloud: CloudConfig | None = None  # the cloud's HTTP API, for data capture
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> DeviceConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as err:
            raise EdgefleetError(f"device config {path} does not exist") from err
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise EdgefleetError(f"device config {path} is not valid TOML: {err}") from err
        return cls.from_dict(data, base=path.parent)

    @classmethod
    def from_dict(cls, data: dict, base: Path = Path(".")) -> DeviceConfig:
        def section(name: str) -> dict:
            value = data.get(name, {})
            if not isinstance(value, dict):
                raise EdgefleetError(f"device config: [{name}] must be a table")
            return value

        device, model, mqtt, telemetry, http, cloud = (section(n) for n in ("device", "model", "mqtt", "telemetry",
                                                                            "http", "cloud"))
        try:
            device_id = check_id(device.get("id", ""), "device.id")
            fleet = check_id(device.get("fleet", "default"), "device.fleet")
        except TopicError as err:
            raise EdgefleetError(f"device config: {err}") from err
        if "bundle" not in model:
            raise EdgefleetError("device config: [model] bundle is required")
        keys = model.get("trusted_keys", [])
        if not keys:
            raise EdgefleetError("device config: [model] trusted_keys must name at least one public key")
        default_slice = device.get("slice")
        if default_slice is not None and check_name(default_slice) is None:
            raise EdgefleetError(f"device config: device.slice must be {NAME_RULE}, got {str(default_slice)[:40]!r}")
        window = float(telemetry.get("window_seconds", 60.0))
        if window <= 0:
            raise EdgefleetError(f"device config: telemetry.window_seconds must be positive, got {window}")
        return cls(
            device=device_id, fleet=fleet, bundle=_path(base, model["bundle"]),
            trusted_keys=tuple(_path(base, k) for k in keys),
            data_dir=_path(base, device.get("data_dir", f"edgefleet-device-{device_id}")),
            backends=_backends(model.get("backends", [])), threads=model.get("threads"),
            mqtt=MqttConfig(mqtt["url"], mqtt.get("username"), mqtt.get("password"), _failover(mqtt),
                            _ca(mqtt, "mqtt", base)) if mqtt.get("url") else None,
            window_seconds=window, outbox_max_bytes=int(telemetry.get("outbox_max_bytes", 16 * 2**20)),
            http_host=str(http.get("host", "127.0.0.1")), http_port=int(http.get("port", 8000)),
            max_body_bytes=int(http.get("max_body_bytes", 2**20)), slice=default_slice,
            cloud=_cloud(cloud, mqtt, base),
        )


def _failover(mqtt: dict) -> tuple[str, ...]:
    urls = mqtt.get("failover", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) and u for u in urls):
        raise EdgefleetError(f"device config: mqtt.failover must be a list of mqtt:// URLs, got {urls!r}")
    from edgefleet.edge_runtime.mqtt import TransportError, parse_url, uses_tls

    for url in urls:
        try:
            parse_url(url)
        except TransportError as err:
            raise EdgefleetError(f"device config: mqtt.failover: {err}") from err
        if uses_tls(url) != uses_tls(str(mqtt.get("url", ""))):
            raise EdgefleetError(f"device config: mqtt.failover: {url!r} and mqtt.url {mqtt.get('url')!r} mix "
                                 f"mqtt:// and mqtts://; use one scheme")
    return tuple(urls)


def _ca(section: dict, name: str, base: Path) -> Path | None:
    """The section's `ca`: a PEM file that must load as trusted certificates, or None."""
    ca = section.get("ca")
    if ca is None:
        return None
    if not isinstance(ca, str) or not ca:
        raise EdgefleetError(f"device config: {name}.ca must be the path of a PEM file, got {ca!r}")
    path = _path(base, ca)
    try:
        client_context(path)
    except EdgefleetError as err:
        raise EdgefleetError(f"device config: {name}.ca: {err}") from err
    return path


def _cloud(cloud: dict, mqtt: dict, base: Path) -> CloudConfig | None:
    if not cloud.get("url"):
        return None
    numbers = {}
    for name, default in (("poll_seconds", 60.0), ("upload_seconds", 10.0), ("max_capture_bytes", 256 * 2**20)):
        value = cloud.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 2**40:
            raise EdgefleetError(f"device config: cloud.{name} must be a positive number, got {value!r}")
        numbers[name] = value
    return CloudConfig(str(cloud["url"]), cloud.get("username", mqtt.get("username")),
                       cloud.get("password", mqtt.get("password")), float(numbers["poll_seconds"]),
                       float(numbers["upload_seconds"]), int(numbers["max_capture_bytes"]), _ca(cloud, "cloud", base))


def _backends(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) and name for name in value):
        raise EdgefleetError(f"device config: model.backends must be a list of backend or target names, got {value!r}")
    return tuple(value)


def _path(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path
