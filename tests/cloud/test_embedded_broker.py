"""The embedded amqtt broker enforces the same rules as Mosquitto with the generated files, against a
real SQLite database; plus the gaps in amqtt that `_GuardedBroker` closes, and start/stop."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import delete

from edgefleet.cloud.broker import BrokerStartError, EmbeddedBroker
from edgefleet.cloud.db import Device, make_engine, make_sessions
from edgefleet.cloud.mqtt_auth import CLOUD_CLIENTS, INGEST, ROLLOUTS, cloud_password, hash_password, new_password
from tests.cloud.mqtt_scenarios import GRACE, SCENARIOS, WAIT, Fleet, Peers, connect, refused, t


def settings(port: int = 0) -> SimpleNamespace:
    return SimpleNamespace(mqtt_host="127.0.0.1", mqtt_port=port)


@pytest.fixture
def sessions(tmp_path):
    return make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))


@pytest.fixture
def passwords(sessions) -> dict[str, str]:
    chosen = {"dev-a": new_password(), "dev-b": new_password()}
    with sessions.begin() as db:
        db.add_all([Device(id=device, fleet="lab", password_hash=hash_password(pw)) for device, pw in chosen.items()])
    return chosen


@pytest.fixture
def broker(sessions, passwords):
    running = EmbeddedBroker(settings(), sessions, cache_seconds=0.2).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def fleet(broker, passwords, sessions) -> Fleet:
    return Fleet(broker.port, broker.cloud_secret, passwords, sessions)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("check_"))
def test_embedded_broker_enforces_the_rules(fleet, scenario):
    scenario(fleet)


def test_subscriptions_to_other_topics_are_refused_in_the_suback(fleet):
    peers = Peers(fleet)
    try:
        dev_a = peers.device("dev-a")
        assert dev_a.subscribe(t(fleet, "dev-a", "cmd")) == 1
        for name in (t(fleet, "dev-b", "cmd"), "edgefleet/v1/+/+/cmd", "edgefleet/v1/#", "#", "$SYS/#"):
            assert dev_a.subscribe(name) == 0x80, name
        ingest = peers.cloud(INGEST)
        for name in ("#", "edgefleet/v1/#", "edgefleet/v1/+/+/cmd", "edgefleet/v1/+/+/+"):
            assert ingest.subscribe(name) == 0x80, name
        assert ingest.subscribe("edgefleet/v1/lab/+/telemetry") == 1  # narrower than its rights is fine
        assert peers.cloud(ROLLOUTS).subscribe("edgefleet/v1/+/+/telemetry") == 0x80
    finally:
        peers.close()


def test_a_device_with_a_reserved_name_cannot_log_in(fleet, sessions):
    """Registered by mistake as "edgefleet-ingest", it could otherwise take over the ingest's session."""
    password = new_password()
    with sessions.begin() as db:
        db.add(Device(id="edgefleet-ingest", fleet="lab", password_hash=hash_password(password)))
    assert refused(fleet.port, "edgefleet-ingest", password)


def test_devices_must_use_their_id_as_client_id(fleet):
    assert refused(fleet.port, "dev-a", fleet.passwords["dev-a"], client_id="dev-b")
    assert refused(fleet.port, "dev-a", fleet.passwords["dev-a"], client_id="")
    connect(fleet.port, "dev-a", fleet.passwords["dev-a"], client_id="dev-a").close()


def test_cloud_clients_must_use_their_username_as_client_id(fleet):
    """A cloud client's credentials cannot open another client's session either (another cloud client's,
    or a device's)."""
    for client in CLOUD_CLIENTS.values():
        password = cloud_password(fleet.cloud_secret, client)
        for other in ("dev-a", "", "edgefleet-test", *(name for name in CLOUD_CLIENTS if name != client.username)):
            assert refused(fleet.port, client.username, password, client_id=other), (client.username, other)
        connect(fleet.port, client.username, password).close()


@pytest.mark.parametrize("clean_session", [True, False])
def test_a_refused_client_cannot_disturb_the_clouds_session(fleet, clean_session):
    """amqtt 0.12 alone deletes (clean session) or takes over (persistent session) the session of the
    connecting client id before it checks the password; the cloud would silently lose its subscriptions."""
    peers = Peers(fleet)
    try:
        ingest = peers.cloud(INGEST, clean_session=False)
        disconnected = threading.Event()
        ingest.client.on_disconnect = lambda *args: disconnected.set()
        assert ingest.subscribe("edgefleet/v1/+/+/telemetry") == 1
        for username, password in ((INGEST.username, "wrong"), ("ghost", "x"), (None, None),
                                   (ROLLOUTS.username, cloud_password(fleet.cloud_secret, ROLLOUTS)),
                                   ("dev-a", fleet.passwords["dev-a"])):  # right password, someone else's id
            assert refused(fleet.port, username, password, client_id="edgefleet-ingest",
                           clean_session=clean_session)
        peers.device("dev-a").publish(t(fleet, "dev-a", "telemetry"), b"still-here")
        ingest.expect(t(fleet, "dev-a", "telemetry"), b"still-here")
        assert not disconnected.is_set()
    finally:
        peers.close()


def test_connecting_clients_get_no_retained_messages_of_others(fleet):
    """amqtt 0.12 alone sends a connecting client the retained messages of every filter anyone holds."""
    peers = Peers(fleet)
    try:
        cloud = peers.cloud(INGEST)
        assert cloud.subscribe("edgefleet/v1/+/+/birth") == 1
        peers.device("dev-b").publish(t(fleet, "dev-b", "birth"), b"b-born", retain=True)
        cloud.expect(t(fleet, "dev-b", "birth"), b"b-born")
        dev_a = peers.device("dev-a")
        assert dev_a.subscribe(t(fleet, "dev-a", "cmd")) == 1
        peers.cloud(ROLLOUTS).publish(t(fleet, "dev-a", "cmd"), b"control")
        dev_a.expect(t(fleet, "dev-a", "cmd"), b"control")
        time.sleep(GRACE)
        assert dev_a.received() == [(t(fleet, "dev-a", "cmd"), b"control")]
    finally:
        peers.close()


def test_a_persistent_cloud_session_gets_qos1_messages_sent_while_it_was_away(fleet):
    peers = Peers(fleet)
    try:
        first = connect(fleet.port, INGEST.username, cloud_password(fleet.cloud_secret, INGEST), clean_session=False)
        assert first.subscribe("edgefleet/v1/+/+/telemetry") == 1
        first.close()
        dev_a = peers.device("dev-a")
        for seq in range(3):
            dev_a.publish(t(fleet, "dev-a", "telemetry"), f"w{seq}".encode(), qos=1)
        again = peers.cloud(INGEST, clean_session=False)
        for seq in range(3):
            message = again.expect(t(fleet, "dev-a", "telemetry"), f"w{seq}".encode())
            assert message.qos == 1 and not message.retain  # amqtt alone would set RETAIN
    finally:
        peers.close()


def test_a_removed_device_is_refused_and_its_open_connection_loses_its_rights(fleet, sessions):
    peers = Peers(fleet)
    try:
        cloud = peers.observer()
        dev_b = peers.device("dev-b")
        with sessions.begin() as db:
            db.execute(delete(Device).where(Device.id == "dev-b"))
        assert refused(fleet.port, "dev-b", fleet.passwords["dev-b"])
        time.sleep(0.3)  # the broker's cache of dev-b's fleet (0.2 s here) runs out
        dev_b.publish(t(fleet, "dev-b", "telemetry"), b"after-removal")
        peers.device("dev-a").publish(t(fleet, "dev-a", "telemetry"), b"control")
        cloud.expect(t(fleet, "dev-a", "telemetry"), b"control")
        time.sleep(GRACE)
        assert (t(fleet, "dev-b", "telemetry"), b"after-removal") not in cloud.received()
    finally:
        peers.close()


# --- start and stop ---------------------------------------------------------------------------------
def test_start_reports_a_taken_port_clearly(sessions):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = EmbeddedBroker(settings(port), sessions)
        with pytest.raises(BrokerStartError, match=f"127.0.0.1:{port} is already in use"):
            broker.start(timeout=WAIT)
        assert not broker.running
        broker.stop()  # harmless


def test_stop_disconnects_clients_and_frees_the_port(sessions, passwords):
    try:  # the real settings class, if it is there; its fields are what the broker reads
        from edgefleet.cloud.settings import CloudSettings

        first_settings = CloudSettings(mqtt_host="127.0.0.1", mqtt_port=0)
    except ImportError:
        first_settings = settings()
    broker = EmbeddedBroker(first_settings, sessions).start()
    port, first_secret = broker.port, broker.cloud_secret
    assert port != 0 and broker.url == f"mqtt://127.0.0.1:{port}"
    peer = connect(port, "dev-a", passwords["dev-a"])
    disconnected = threading.Event()
    peer.client.on_disconnect = lambda *args: disconnected.set()
    try:
        broker.stop()
        assert disconnected.wait(WAIT)
        assert not broker.running and broker.cloud_secret is None
    finally:
        peer.close()
    again = EmbeddedBroker(settings(port), sessions).start()  # the same port is free again
    try:
        assert again.port == port and again.cloud_secret != first_secret
        assert refused(port, INGEST.username, cloud_password(first_secret, INGEST))
        connect(port, INGEST.username, cloud_password(again.cloud_secret, INGEST)).close()
    finally:
        again.stop()
