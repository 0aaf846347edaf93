"""The cloud service in one process: database, MQTT broker, background components and the HTTP API, or the
part of them that `settings.role` names (cloud/roles.py; the default `all` runs everything).

`start()` checks the role against the settings, then brings the parts up in dependency order (database,
embedded broker with role `all` unless an external one is configured, the components from
`build_components`, then uvicorn on a real socket in a thread for roles `all` and `api`) and `stop()`
takes them down in reverse; if any step of `start()` fails, what already runs is stopped.
The first start of an API on an empty database creates an admin token and keeps it in `new_admin_token`
so that the caller can show it once.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

import uvicorn
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.app import create_app
from edgefleet.cloud.auth import ensure_admin_token
from edgefleet.cloud.components import Component, build_components
from edgefleet.cloud.db import make_engine, make_sessions
from edgefleet.cloud.roles import check_role, runs
from edgefleet.cloud.settings import CloudSettings
from edgefleet.cloud.signed_urls import download_secret
from edgefleet.core.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.cloud.broker import EmbeddedBroker

log = logging.getLogger(__name__)

STARTUP_TIMEOUT = 30.0  # seconds for uvicorn to start listening
GRACEFUL_SECONDS = 5.0  # open HTTP requests get this long to finish on stop


class CloudServer:
    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.sessions: sessionmaker | None = None
        self.new_admin_token: str | None = None
        self.broker: EmbeddedBroker | None = None
        self.components: list[Component] = []
        self._running: list[Component] = []  # everything with stop(), in the order it started
        self._http: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> CloudServer:
        if self.engine is not None:
            raise RuntimeError("CloudServer is started already")
        settings = self.settings
        check_role(settings.role, settings.db_url, settings.mqtt_url, settings.worker, settings.public_url)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = make_engine(settings.db_url)
        self.sessions = make_sessions(self.engine)
        try:
            serves_http = runs(settings.role, "api")
            # loads the trusted keys: a bad key fails before anything runs
            app = create_app(settings, self.sessions) if serves_http else None
            if settings.mqtt_url is None and settings.role == "all":
                from edgefleet.cloud.broker import EmbeddedBroker

                self.broker = EmbeddedBroker(settings, self.sessions)
                self._start_one(self.broker, "embedded MQTT broker")
            else:
                log.info("using the external MQTT broker at %s", settings.mqtt_url)
            if app is not None:
                app.state.broker_url = self.broker_url  # what GET /api/v1/info tells devices and `edgefleet sim`
                app.state.broker = self.broker  # None with an external broker; revocations reach the embedded one
            if serves_http or runs(settings.role, "rollouts"):
                download_secret(settings, self.sessions)  # made on the first start, before anything signs a URL
            self.components = list(build_components(settings, self.sessions, self.broker, public_url=lambda: (
                self.public_url if self._socket is not None or settings.public_url else None)))
            for component in self.components:
                self._start_one(component, getattr(component, "name", type(component).__name__))
            if app is not None:
                self._serve(app)
                # Last, so that a start that failed half-way never swallows the one chance to see the token.
                self.new_admin_token = ensure_admin_token(self.sessions)
        except BaseException:
            self.stop()
            raise
        log.info("edgefleet cloud (role %s) is up%s", settings.role, f" at {self.url}" if self._socket else "")
        return self

    def stop(self) -> None:
        """Stops the HTTP server (open requests get GRACEFUL_SECONDS), then the components and the broker in
        reverse order, then closes the database. Safe to call more than once."""
        self._stop_http()
        while self._running:
            component = self._running.pop()
            try:
                component.stop()
            except Exception:  # noqa: BLE001 - one failing stop must not keep the others running
                log.exception("stopping %s failed", getattr(component, "name", type(component).__name__))
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    def run_forever(self) -> None:
        """Serves until SIGINT or SIGTERM (call from the main thread), then stops everything."""
        requested = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            requested.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not requested.wait(0.5):
                if self._socket is not None and (self._thread is None or not self._thread.is_alive()):
                    raise RuntimeError("the HTTP server stopped unexpectedly (see the log above)")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def __enter__(self) -> CloudServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # where to reach it -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The API's base URL, with the port actually bound (settings.port may be 0)."""
        if self._socket is None:
            raise RuntimeError("CloudServer is not running")
        host = self.settings.host
        scheme = "https" if self.settings.tls_cert is not None else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self._socket.getsockname()[1]}"

    @property
    def serves_http(self) -> bool:
        """True while the HTTP API listens (roles all and api)."""
        return self._socket is not None

    @property
    def public_url(self) -> str:
        """The API's base URL as devices reach it: settings.public_url, or the bound address."""
        return self.settings.public_url or self.url

    @property
    def broker_url(self) -> str:
        """The MQTT broker devices and components use (the embedded one's bound port, if it runs)."""
        return self.broker.url if self.broker is not None else self.settings.broker_url

    # internals ---------------------------------------------------------------------------------------
    def _start_one(self, component: Component, label: str) -> None:
        component.start()
        self._running.append(component)
        log.info("started %s", label)

    def _serve(self, app: object) -> None:
        host, port = self.settings.host, self.settings.port
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY on accepted sockets only when proto says TCP (with 0, a
        # keep-alive client waited for its delayed ACK, ~40 ms, between a response's head and body)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            sock.close()
            raise EdgefleetError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
        self._socket = sock
        if not self.settings.public_url and host in ("0.0.0.0", "::", ""):
            log.warning("the API listens on %s and public_url is not set: install commands would tell devices to "
                        "download from %s; set EDGEFLEET_PUBLIC_URL to the address devices reach", host, self.url)
        tls = self.settings.tls_cert is not None
        config = uvicorn.Config(app, log_config=None, lifespan="on", timeout_graceful_shutdown=GRACEFUL_SECONDS,
                                ssl_certfile=str(self.settings.tls_cert) if tls else None,
                                ssl_keyfile=str(self.settings.tls_key) if tls else None)
        self._http = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._http.run, kwargs={"sockets": [sock]},
                                        name="edgefleet-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._http.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {host}:{port} (see the log above)")
            time.sleep(0.02)

    def _stop_http(self) -> None:
        if self._http is not None and self._thread is not None:
            self._http.should_exit = True
            self._thread.join(GRACEFUL_SECONDS + 5)
            if self._thread.is_alive():
                log.warning("HTTP server did not stop within %.0f s; forcing it", GRACEFUL_SECONDS + 5)
                self._http.force_exit = True
                self._thread.join(5)
        self._http = self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
