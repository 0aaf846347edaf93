"""The device agent: serves a model (Python API and local HTTP), reports telemetry over MQTT, and takes
over-the-air updates.

    agent = DeviceAgent(DeviceConfig.load("device.toml")).start()
    agent.predict(x)                  # or POST http://127.0.0.1:8000/v1/predict
    agent.stop()

Start-up order: the model slots (on first start the configured bundle is verified and installed as the
first slot), a Predictor on the current slot whose self-test must pass, the ModelHost that serves it,
the outbox and MQTT (birth message, last will, commands), the Updater (which first recovers from an
update a crash interrupted), the window timer, then HTTP. Every telemetry window and OTA status goes
into the on-disk outbox first and leaves it only when the broker has acknowledged it. Telemetry windows
hold one model version each: the window of a model that stops serving is closed when its last request
is done. With a [cloud] section, data capture (edge_runtime/capture.py) starts before HTTP: off until the
fleet's settings, read over HTTPS, turn it on. stop() closes the last window and gives the transport a
moment to send it. A bundle made
without reference data (no reference profile), or whose profile this runtime cannot bin on, is served
with telemetry off, said in one log line.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import replace
from pathlib import Path

import uvicorn

from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.ota import OtaError, Status, parse_command
from edgefleet.core.signing import TrustStore
from edgefleet.core.telemetry import Dropped, TelemetryWindow
from edgefleet.core.topics import topic
from edgefleet.edge_runtime.backends import default_backends
from edgefleet.edge_runtime.capture import Capturer
from edgefleet.edge_runtime.capture_spool import CaptureSpool
from edgefleet.edge_runtime.capture_upload import CaptureUplink
from edgefleet.edge_runtime.device_config import DeviceConfig
from edgefleet.edge_runtime.device_health import HealthSampler
from edgefleet.edge_runtime.feedback import RecentPredictions, is_label_command, join_forwarded
from edgefleet.edge_runtime.http_api import create_app
from edgefleet.edge_runtime.metrics import DeviceMetrics
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.outbox import Outbox
from edgefleet.edge_runtime.predictor import Predictor
from edgefleet.edge_runtime.slots import SlotStore
from edgefleet.edge_runtime.telemetry import TelemetryAggregator
from edgefleet.edge_runtime.updater import Updater

log = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"
MAX_BUNDLE_BYTES = 1 << 30  # the configured first bundle; updates carry their own limit
COMMAND_WAIT_SECONDS = 900.0  # how long a command waits for a running update (health windows included)
SEEN_COMMANDS = 200  # command ids remembered to ignore redeliveries


class DeviceAgent:
    def __init__(self, config: DeviceConfig, *, serve_http: bool = True) -> None:
        self.config = config
        self.serve_http = serve_http
        self.store: SlotStore | None = None
        self.host: ModelHost | None = None
        self.updater: Updater | None = None
        self.outbox: Outbox | None = None
        self._seen_commands: list[str] = []
        self.transport = None
        self.metrics = DeviceMetrics(device=config.device, fleet=config.fleet, gauges=self.gauges)
        self.windows_closed = 0  # telemetry windows closed since start (sent too, with MQTT)
        self.recent = RecentPredictions()  # predictions by request id, for labels that arrive later
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None
        self.health_sampler: HealthSampler | None = None  # made at start: it counts the starts
        self.capturer: Capturer | None = None  # with a [cloud] section (data capture)
        self.uplink: CaptureUplink | None = None

    # lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> DeviceAgent:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.health_sampler = HealthSampler(config.data_dir)
        trust = TrustStore.from_paths(config.trusted_keys)
        self.store = SlotStore(config.data_dir / "model", trust)
        if self.store.current() is None:  # first start: the configured bundle becomes the first slot
            self.store.activate(self.store.install(config.bundle, max_bytes=MAX_BUNDLE_BYTES))
        predictor = self._make_predictor(self.store.current().path)
        report = predictor.self_test()
        if not report.passed:
            raise EdgefleetError(f"self-test failed, refusing to serve: {'; '.join(report.failures)}")
        self.host = ModelHost(predictor, telemetry=self._make_aggregator, on_retire=self._retire)
        if config.mqtt:
            from edgefleet.edge_runtime.mqtt import MqttTransport

            self.outbox = Outbox(config.data_dir / "outbox.sqlite", max_bytes=config.outbox_max_bytes)
            self.transport = MqttTransport(
                config.mqtt.url, fleet=config.fleet, device=config.device, outbox=self.outbox,
                username=config.mqtt.username, password=config.mqtt.password, birth=self._birth,
                on_command=self._on_command, failover=config.mqtt.failover, ca=config.mqtt.ca,
            )
        self.updater = Updater(self.store, self.host, trust=trust, workdir=config.data_dir / "incoming",
                               report=self._report_status, fleet=config.fleet, device=config.device,
                               make_predictor=self._make_predictor,
                               ca=config.cloud.ca if config.cloud is not None else None)
        self._seen_commands = self._load_seen_commands()
        self.updater.recover()  # an update a crash interrupted: serve a whole model, say where it stopped
        if self.transport is not None:
            self.transport.start()
        self._timer = threading.Thread(target=self._window_loop, name="telemetry-window", daemon=True)
        self._timer.start()
        if config.cloud is not None:
            self._start_capture()
        if self.serve_http:
            self._start_http()
        log.info("device %s serving %s v%s", config.device, self.predictor.bundle.name, self.predictor.bundle.version)
        return self

    def stop(self, flush_timeout: float = 5.0) -> None:
        self._stop.set()
        if self._http:
            self._http.should_exit = True
            if self._http_thread:
                self._http_thread.join(10)
        if self._timer:
            self._timer.join(10)
        if self.updater:
            self.updater.close()
        if self.uplink:
            self.uplink.stop()
        if self.capturer:
            self.capturer.close()
            self.capturer.spool.close()
        if self.host:
            self.close_window()
        if self.transport:
            self.transport.flush(flush_timeout)
            self.transport.stop()
        if self.outbox:
            self.outbox.close()
        if self.host:
            self.host.current.close()

    def __enter__(self) -> DeviceAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def http_url(self) -> str:
        return f"http://{self.config.http_host}:{self.config.http_port}"

    # serving -------------------------------------------------------------------------------------------
    def predict(self, inputs):  # noqa: ANN001, ANN201 - as Predictor.predict
        return self.host.predict(inputs)

    @property
    def predictor(self) -> Predictor:
        """The Predictor serving now (it changes with updates)."""
        return self.host.current

    @property
    def aggregator(self) -> TelemetryAggregator | None:
        """The serving model's telemetry; None when it has none (a bundle without a reference profile)."""
        return self.host.current.telemetry

    def _make_predictor(self, bundle_dir: Path) -> Predictor:
        """The configured backends, else each bundle's own order (a TFLite-only update runs on litert)."""
        bundle = Bundle.open(bundle_dir)
        backends = list(self.config.backends) or default_backends(bundle)
        return Predictor(bundle, backends=backends, threads=self.config.threads,
                         trusted_keys=list(self.config.trusted_keys), cache_dir=self.config.data_dir / "cache")

    def _make_aggregator(self, predictor: Predictor) -> TelemetryAggregator | None:
        try:
            return TelemetryAggregator(predictor.bundle, fleet=self.config.fleet, device=self.config.device)
        except EdgefleetError as err:  # no reference profile, or one this runtime cannot bin on: serve without
            log.warning("telemetry is off for %s v%s: %s", predictor.bundle.name, predictor.bundle.version, err)
            return None

    def _retire(self, predictor: Predictor) -> None:
        """A model stopped answering users and its last request is done: close its version's window."""
        if predictor.telemetry is not None:
            self._send_window(self._with_health(predictor.telemetry.close_window()))

    # telemetry -----------------------------------------------------------------------------------------
    def close_window(self) -> TelemetryWindow | None:
        """Closes the serving model's window; with MQTT it goes into the outbox. None: telemetry is off."""
        aggregator = self.aggregator
        if aggregator is None:
            return None
        window = self._with_health(aggregator.close_window())
        self._send_window(window)
        return window

    def _with_health(self, window: TelemetryWindow) -> TelemetryWindow:
        """The window with the device's health as it closes (edge_runtime/device_health.py)."""
        if self.health_sampler is None:
            return window
        try:
            return replace(window, health=self.health_sampler.sample())
        except Exception:  # noqa: BLE001 - a sensor that fails must not cost the window
            log.exception("sampling the device's health failed; the window goes without it")
            return window

    def _send_window(self, window: TelemetryWindow) -> None:
        self.windows_closed += 1
        if self.outbox is not None:
            def render(seq: int, dropped: Dropped) -> bytes:
                return replace(window, seq=seq, dropped=dropped).to_payload()

            self.outbox.append(topic(self.config.fleet, self.config.device, "telemetry"), render)
            self.transport.wake()

    # data capture --------------------------------------------------------------------------------------
    def _start_capture(self) -> None:
        """The spool next to the outbox, the capturer (off until the fleet's settings say otherwise; the last
        settings the cloud gave are persisted) and the uplink that reads settings and uploads samples."""
        cloud = self.config.cloud
        if not (cloud.username and cloud.password):
            raise EdgefleetError("device config: [cloud] needs the device's credentials (username and password, "
                                 "or an [mqtt] section with them)")
        spool = CaptureSpool(self.config.data_dir / "capture.sqlite", max_bytes=cloud.max_capture_bytes)
        self.capturer = Capturer(spool, fleet=self.config.fleet, device=self.config.device,
                                 state_path=self.config.data_dir / "capture-policy.json",
                                 max_spool_bytes=cloud.max_capture_bytes)
        self.uplink = CaptureUplink(self.capturer, cloud.url, username=cloud.username, password=cloud.password,
                                    poll_seconds=cloud.poll_seconds, upload_seconds=cloud.upload_seconds,
                                    ca=cloud.ca).start()

    def model_card(self) -> dict:
        """GET /v1/model-card: the serving bundle's model card, with the data capture policy in force."""
        bundle = self.host.current.bundle
        card = dict(bundle.manifest.get("model_card") or {})
        capture = self.capturer.describe(bundle) if self.capturer else {"mode": "off (no [cloud] section)"}
        card["data_capture_in_force"] = capture["mode"]
        card["data_capture_never"] = capture["mode"].startswith("never")
        return {"model": {"name": bundle.name, "version": bundle.version}, "fleet": self.config.fleet,
                "model_card": card}

    # updates ---------------------------------------------------------------------------------------------
    def _on_command(self, payload: bytes) -> None:
        """A message on this device's cmd topic. The transport calls this on its one command thread, so
        commands are handled in the order they came: a rollback that follows an install waits for the
        install to end instead of being refused as busy. A command that does not parse is refused with a
        status when it can be (see _refuse_command). A command id seen before (a QoS 1 redelivery,
        the cloud's republish after its restart) is ignored, across restarts too."""
        if is_label_command(payload):  # labels the cloud received for this device's predictions
            joined, refused = join_forwarded(payload, self.recent, self.host)
            log.info("labels from the cloud: %d joined, %d refused%s", joined, len(refused),
                     f" (first: {refused[0]})" if refused else "")
            return
        try:
            command = parse_command(payload)
        except OtaError as err:
            self._refuse_command(err)
            return
        if command.id in self._seen_commands:
            log.info("ignored command %s: handled before", command.id)
            return
        if not self.updater.wait(COMMAND_WAIT_SECONDS):
            log.warning("command %s: the running update has not ended after %.0f s", command.id,
                        COMMAND_WAIT_SECONDS)
        self._remember(command.id)
        self.updater.handle(command)

    def _refuse_command(self, err: OtaError) -> None:
        """A command that breaks a rule (a number out of range, an unknown mode): if its id and deployment
        are readable, the cloud hears "failed", reason "bad_command" (once per id); else it is only logged."""
        if err.command_id is None or err.command_id in self._seen_commands:
            log.warning("ignored a malformed command: %s", err)
            return
        log.warning("refused command %s: %s", err.command_id, err)
        self._remember(err.command_id)
        self._report_status(Status(self.config.fleet, self.config.device, err.command_id, err.deployment, "failed",
                                   None, "bad_command", {"message": str(err), "field": err.reason}, time.time()))

    def _remember(self, command_id: str) -> None:
        self._seen_commands.append(command_id)
        del self._seen_commands[:-SEEN_COMMANDS]
        path = self.config.data_dir / "commands-seen.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._seen_commands))
        os.replace(temporary, path)

    def _load_seen_commands(self) -> list[str]:
        try:
            seen = json.loads((self.config.data_dir / "commands-seen.json").read_text())
            return [str(i) for i in seen][-SEEN_COMMANDS:] if isinstance(seen, list) else []
        except (OSError, ValueError):
            return []

    def _report_status(self, status: Status) -> None:
        log.info("update %s: %s%s", status.command, status.state, f" ({status.reason})" if status.reason else "")
        if self.outbox is None:
            return

        def render(seq: int, dropped: Dropped) -> bytes:
            return replace(status, seq=seq, at=status.at or time.time()).to_payload()

        self.outbox.append(topic(self.config.fleet, self.config.device, "status"), render)
        self.transport.wake()

    def _window_loop(self) -> None:
        period = self.config.window_seconds
        next_close = time.monotonic() + period
        while not self._stop.wait(max(0.0, next_close - time.monotonic())):
            try:
                self.close_window()
            except Exception:  # noqa: BLE001 - a failed window must not stop serving
                log.exception("closing the telemetry window failed")
            next_close += period

    def _birth(self) -> bytes:
        bundle = self.host.current.bundle
        return json.dumps({
            "schema": "edgefleet.birth", "v": 1, "fleet": self.config.fleet, "device": self.config.device,
            "online": True, "model": {"name": bundle.name, "version": bundle.version},
            "backend": self.predictor.backend_name, "runtime": self.predictor.describe(),
            "agent_version": AGENT_VERSION, "at": time.time(),
        }).encode()

    # HTTP ------------------------------------------------------------------------------------------------
    def health(self) -> dict:
        return {
            "device": self.config.device, "fleet": self.config.fleet,
            "mqtt": None if self.transport is None else {"connected": self.transport.connected,
                                                          "outbox_pending": len(self.outbox),
                                                          "last_error": self.transport.last_error},
            "capture": None if self.capturer is None else {**self.capturer.describe(self.host.current.bundle),
                                                           "uploaded": self.uplink.uploaded,
                                                           "last_error": self.uplink.last_error},
        }

    def gauges(self) -> dict[str, float]:
        """The device's gauges for GET /metrics (the request counters are kept by self.metrics)."""
        gauges = {"window_seconds": self.config.window_seconds}
        if self.health_sampler is not None:  # temperature only where the OS exposes it: no gauge, not a 0
            health = self.health_sampler.sample().to_dict()
            gauges.update({name: value for name, value in health.items() if value is not None})
        if self.transport is not None:
            gauges.update(mqtt_connected=float(self.transport.connected), outbox_pending=float(len(self.outbox)))
        return gauges

    def _start_http(self) -> None:
        app = create_app(self.host, max_body_bytes=self.config.max_body_bytes, health=self.health,
                         metrics=self.metrics, recent=self.recent, default_slice=self.config.slice,
                         model_card=self.model_card, capture=self.capturer.offer if self.capturer else None)
        self._http = uvicorn.Server(uvicorn.Config(app, host=self.config.http_host, port=self.config.http_port,
                                                   log_level="warning", access_log=False))
        self._http_thread = threading.Thread(target=self._http.run, name="device-http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + 10
        while not self._http.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise EdgefleetError(f"the HTTP server could not listen on {self.http_url}")
            time.sleep(0.02)
