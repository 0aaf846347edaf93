"""Alert webhooks (cloud/webhooks.py) against a real HTTP receiver on a loopback port: HMAC-signed bodies,
retries with exponential backoff after failures, the delivery log, and a webhook that never answers."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import select

from edgefleet.cloud.db import Alert, Device, make_engine, make_sessions
from edgefleet.cloud.ops_tables import Webhook, WebhookDelivery
from edgefleet.cloud.webhooks import WebhookDispatcher, newest_alert_id
from tests.cloud.webhook_receiver import Receiver

SECRET = "s3cret-key-of-the-receiver"


class Clock:
    """The dispatcher's clock, moved by the test: backoff is checked as scheduled times, never measured."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sessions(tmp_path):
    return make_sessions(make_engine(f"sqlite:///{tmp_path / 'cloud.db'}"))


def add_alert(sessions, kind: str = "data_quality", device: str = "pi-01") -> int:
    with sessions.begin() as session:
        alert = Alert(scope="device", scope_id=device, fleet="lab", model_name="digits-cnn", model_version=1,
                      kind=kind, message=f"{kind} on device {device}", details={"issues": []}, status="open")
        session.add(alert)
        session.flush()
        return alert.id


def add_hook(sessions, url: str, secret: str = SECRET) -> int:
    with sessions.begin() as session:
        hook = Webhook(url=url, secret=secret, cursor=newest_alert_id(session))
        session.add(hook)
        session.flush()
        return hook.id


def deliveries(sessions) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_a_failing_receiver_gets_the_alert_after_backed_off_retries_signed(sessions):
    add_alert(sessions, device="before-the-hook")  # older than the webhook: never sent to it
    clock = Clock()
    dispatcher = WebhookDispatcher(sessions, retry_base=2.0, max_attempts=5, clock=clock)
    with Receiver(SECRET, fail_first=3) as receiver:
        add_hook(sessions, receiver.url)
        alert_id = add_alert(sessions)
        scheduled = []
        for _ in range(4):
            assert dispatcher.run_once() == 1  # one attempt is due each time the clock reaches it
            (delivery,) = deliveries(sessions)
            scheduled.append(delivery.next_attempt_at - clock.now)
            assert dispatcher.run_once() == 0  # nothing is due before its time
            clock.now = delivery.next_attempt_at
    assert receiver.answers == [503, 503, 503, 204] and receiver.forged == 0
    assert scheduled[:3] == [2.0, 4.0, 8.0]  # exponential backoff: 2 s, doubling
    assert delivery.state == "delivered" and delivery.attempts == 4 and delivery.last_status == 204
    assert [h["status"] for h in delivery.history] == [503, 503, 503, 204]
    (body,) = receiver.accepted
    assert body["event"] == "alert.opened" and body["alert"]["id"] == alert_id
    assert body["alert"]["kind"] == "data_quality" and body["alert"]["scope_id"] == "pi-01"


def test_a_receiver_with_another_secret_refuses_and_the_delivery_fails_after_its_attempts(sessions):
    clock = Clock()
    dispatcher = WebhookDispatcher(sessions, retry_base=1.0, max_attempts=3, clock=clock)
    with Receiver("the-receivers-own-secret", fail_first=0) as receiver:
        add_hook(sessions, receiver.url, secret="a-different-secret-1234")
        add_alert(sessions, kind="latency")
        for _ in range(5):
            dispatcher.run_once()
            clock.now += 60
    (delivery,) = deliveries(sessions)
    assert receiver.forged == 3 and receiver.accepted == []  # the signature is checked over the body
    assert delivery.state == "failed" and delivery.attempts == 3 and delivery.last_status == 401


def test_an_unreachable_webhook_is_logged_and_other_webhooks_still_get_the_alert(sessions):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    clock = Clock()
    dispatcher = WebhookDispatcher(sessions, retry_base=1.0, max_attempts=2, timeout=5, clock=clock)
    with Receiver(SECRET) as receiver:
        add_hook(sessions, dead)
        add_hook(sessions, receiver.url)
        add_alert(sessions, kind="device_health")
        add_alert(sessions, kind="data_drift")
        for _ in range(3):
            dispatcher.run_once()
            clock.now += 10
    rows = deliveries(sessions)
    assert sorted((d.state, d.attempts) for d in rows) == [("delivered", 1), ("delivered", 1), ("failed", 2),
                                                           ("failed", 2)]
    failed = [d for d in rows if d.state == "failed"]
    assert all(d.last_status is None and "Connection refused" in d.last_error for d in failed)
    assert sorted(b["alert"]["kind"] for b in receiver.accepted) == ["data_drift", "device_health"]


# --- resolved events ---------------------------------------------------------------------------------------
def close_alert(sessions, alert_id: int, at: float = 1_000_100.0) -> None:
    with sessions.begin() as session:
        alert = session.get(Alert, alert_id)
        alert.status, alert.closed_at = "closed", at


def test_a_latency_alert_the_ops_monitor_closes_is_sent_resolved_after_its_opened_event(sessions):
    """The real ops monitor opens and closes the alert; the receiver refuses the first two POSTs, so the
    opened event is still being retried when the alert closes: the resolved event waits for it."""
    from edgefleet.cloud.ops_monitor import OpsMonitor
    from tests.cloud.test_ops_monitor import T0, Feed

    with sessions.begin() as session:
        session.add(Device(id="pi-01", fleet="lab", password_hash="x"))
    feed, monitor = Feed(sessions), OpsMonitor(sessions, lambda name, version: None)
    clock = Clock()
    dispatcher = WebhookDispatcher(sessions, retry_base=1.0, max_attempts=5, clock=clock)
    with Receiver(SECRET, fail_first=2) as receiver:
        add_hook(sessions, receiver.url)
        feed.send("pi-01", T0, slow=10)  # 10 of 50 requests slower than 500 ms
        (opened,) = monitor.run_once(T0)
        dispatcher.run_once()  # the opened event: refused (503)
        feed.send("pi-01", T0 + 400)  # fast again: the lookback (300 s) holds only this window
        assert monitor.run_once(T0 + 400) == []
        for _ in range(4):
            clock.now += 10
            dispatcher.run_once()
    assert receiver.answers == [503, 503, 204, 204] and receiver.forged == 0
    assert [(b["event"], b["alert"]["id"], b["alert"]["status"]) for b in receiver.accepted] == [
        ("alert.opened", opened.id, "closed"), ("alert.resolved", opened.id, "closed")]
    resolved = receiver.accepted[1]["alert"]
    assert resolved["kind"] == "latency" and resolved["closed_at"] == T0 + 400
    rows = deliveries(sessions)
    assert [(d.event, d.state, d.attempts) for d in rows] == [("alert.opened", "delivered", 3),
                                                              ("alert.resolved", "delivered", 1)]


def test_alerts_closing_in_any_order_each_get_one_resolved_event(sessions):
    clock = Clock()
    dispatcher = WebhookDispatcher(sessions, clock=clock)
    with Receiver(SECRET) as receiver:
        add_hook(sessions, receiver.url)
        first, second, third = (add_alert(sessions, device=f"pi-{n}") for n in range(3))
        dispatcher.run_once()
        close_alert(sessions, second)  # a newer alert closes while an older one stays open
        for _ in range(3):
            dispatcher.run_once()  # again and again: still one resolved event for it
        close_alert(sessions, first)
        fourth = add_alert(sessions, device="pi-3")
        close_alert(sessions, fourth)  # opened and closed between two runs: both events, in order
        for _ in range(3):
            dispatcher.run_once()
    events = [(b["event"], b["alert"]["id"]) for b in receiver.accepted]
    assert events == [("alert.opened", first), ("alert.opened", second), ("alert.opened", third),
                      ("alert.resolved", second), ("alert.opened", fourth), ("alert.resolved", first),
                      ("alert.resolved", fourth)]
    with sessions() as session:
        (hook,) = session.scalars(select(Webhook)).all()
    assert hook.resolved_cursor == third - 1  # the oldest open alert bounds the next scans


def test_a_webhook_gets_only_the_events_and_kinds_it_subscribed_to(sessions):
    clock = Clock()
    dispatcher = WebhookDispatcher(sessions, clock=clock)
    with Receiver(SECRET) as receiver, Receiver(SECRET) as everything:
        with sessions.begin() as session:
            session.add(Webhook(url=receiver.url, secret=SECRET, cursor=0, events=["alert.resolved"],
                                kinds=["latency", "data_quality"]))
        add_hook(sessions, everything.url)
        latency, drift = add_alert(sessions, kind="latency"), add_alert(sessions, kind="data_drift")
        add_alert(sessions, kind="data_quality")  # stays open
        dispatcher.run_once()
        close_alert(sessions, latency)
        close_alert(sessions, drift)
        dispatcher.run_once()
    assert [(b["event"], b["alert"]["id"]) for b in receiver.accepted] == [("alert.resolved", latency)]
    assert sorted((b["event"], b["alert"]["kind"]) for b in everything.accepted) == [
        ("alert.opened", "data_drift"), ("alert.opened", "data_quality"), ("alert.opened", "latency"),
        ("alert.resolved", "data_drift"), ("alert.resolved", "latency")]


def test_the_accuracy_alert_the_performance_monitor_closes_is_sent_resolved(sessions):
    """A second real monitor: the label-free accuracy alert opens on a confidence drop and closes on recovery."""
    from edgefleet.cloud.performance_monitor import PerformanceMonitor
    from tests.cloud.test_performance import PROFILE, store

    with sessions.begin() as session:
        session.add(Device(id="d1", fleet="f1", password_hash="x"))
    monitor = PerformanceMonitor(sessions, lambda name, version: PROFILE, lookback_seconds=10, min_samples=100)
    dispatcher = WebhookDispatcher(sessions, clock=Clock())
    with Receiver(SECRET) as receiver:
        add_hook(sessions, receiver.url)
        store(sessions, "d1", 1, 100.0, 60, 40)  # estimated 0.7 against the 0.95 expected
        monitor.run_once(now=101)
        dispatcher.run_once()
        store(sessions, "d1", 2, 130.0, 5, 95)  # 0.975: back
        monitor.run_once(now=131)
        dispatcher.run_once()
    events = sorted((b["alert"]["scope"], b["event"], b["alert"]["status"]) for b in receiver.accepted)
    assert events == [("device", "alert.opened", "open"), ("device", "alert.resolved", "closed"),
                      ("fleet", "alert.opened", "open"), ("fleet", "alert.resolved", "closed")]
    assert {b["alert"]["kind"] for b in receiver.accepted} == {"estimated_accuracy"}
