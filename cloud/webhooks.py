"""Alert delivery to webhooks: every alert the monitors open (drift, sequential drift, performance,
operations) is POSTed as JSON to every webhook, and again when the monitor closes it; signed, retried with
exponential backoff, and logged.

    POST <url>
    Content-Type: application/json
    X-Edgefleet-Event: alert.opened | alert.resolved
    X-Edgefleet-Delivery: <delivery id>
    X-Edgefleet-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed with the webhook's secret>

    {"event": "alert.opened", "delivery": 17, "alert": {"id", "kind", "scope", "scope_id", "fleet",
     "model_name", "model_version", "message", "details", "status", "opened_at", "closed_at", "late_by"}}

A receiver checks the signature over the raw body before parsing it (`signature(secret, body)` is the
reference; compare with hmac.compare_digest). A 2xx answer delivers; anything else (another status, a
refused connection, a timeout) is a failed attempt, retried after RETRY_BASE * 2^(attempt - 1) seconds
up to `max_attempts` attempts, then the delivery is "failed". Every attempt is kept in the delivery's
history (table webhook_deliveries): the status or error and how long it took.

The dispatcher polls the alerts table (alert ids only grow): a webhook gets the alerts opened after it
was made (its cursor starts at the newest alert), so adding a webhook never replays history, and the
"alert.resolved" event of each of those alerts once it is closed. Alerts close in any order, so a second
cursor (`resolved_cursor`) stands just below the oldest of them still open, and each run looks only
above it for closed alerts without a resolved delivery; status and the decision to move the cursor come
from one query, so an alert closing mid-run is never skipped. A resolved event waits while its alert's
opened event is still being retried, so a receiver never sees "resolved" before "opened". A webhook may
subscribe to some events (`events`) and some alert kinds (`kinds`); None is all. State is all in the
database: a restarted cloud resumes pending retries where they stood.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from edgefleet.cloud.db import Alert
from edgefleet.cloud.ops_tables import Webhook, WebhookDelivery
from edgefleet.cloud.periodic import PeriodicWorker

log = logging.getLogger(__name__)
OPENED, RESOLVED = "alert.opened", "alert.resolved"
EVENTS = (OPENED, RESOLVED)
RETRY_BASE = 1.0  # seconds before the second attempt; doubles each time
MAX_ATTEMPTS = 6
TIMEOUT = 10.0  # seconds a receiver has to answer
HISTORY = 20  # attempts kept per delivery


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def alert_body(alert: Alert, delivery_id: int, event: str = OPENED) -> bytes:
    return json.dumps({"event": event, "delivery": delivery_id, "alert": {
        "id": alert.id, "kind": alert.kind, "scope": alert.scope, "scope_id": alert.scope_id, "fleet": alert.fleet,
        "model_name": alert.model_name, "model_version": alert.model_version, "message": alert.message,
        "details": alert.details, "status": alert.status, "opened_at": alert.opened_at,
        "closed_at": alert.closed_at, "late_by": alert.late_by,
    }}, separators=(",", ":"), sort_keys=True).encode()


def newest_alert_id(session: Session) -> int:
    return session.scalar(select(func.max(Alert.id))) or 0


class WebhookDispatcher(PeriodicWorker):
    name = "webhooks"
    stop_timeout = 15.0  # an attempt in flight may take its whole HTTP timeout

    def __init__(self, sessions: sessionmaker, *, interval_seconds: float = 1.0, retry_base: float = RETRY_BASE,
                 max_attempts: int = MAX_ATTEMPTS, timeout: float = TIMEOUT,
                 clock: Callable[[], float] = time.time) -> None:
        if retry_base <= 0 or max_attempts < 1 or interval_seconds <= 0:
            raise ValueError("retry_base and interval_seconds must be positive, max_attempts at least 1")
        self._sessions, self.interval_seconds = sessions, interval_seconds
        self.retry_base, self.max_attempts, self.timeout, self._clock = retry_base, max_attempts, timeout, clock
        super().__init__()

    def run_once(self) -> int:
        """Queues the new alerts for every webhook and makes the attempts that are due; returns attempts made."""
        with self._sessions.begin() as session:
            self._enqueue(session)
        opened = aliased(WebhookDelivery)
        opened_pending = exists().where(opened.webhook_id == WebhookDelivery.webhook_id,
                                        opened.alert_id == WebhookDelivery.alert_id, opened.event == OPENED,
                                        opened.state == "pending")
        with self._sessions() as session:
            due = session.scalars(select(WebhookDelivery.id).where(
                WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= self._clock(),
                ~((WebhookDelivery.event == RESOLVED) & opened_pending))
                .order_by(WebhookDelivery.id).limit(100)).all()
        for delivery_id in due:
            if self._stop.is_set():
                break
            self._attempt(delivery_id)
        return len(due)

    def _enqueue(self, session: Session) -> None:
        for hook in session.scalars(select(Webhook)).all():
            events, kinds = set(hook.events or EVENTS), set(hook.kinds or ())
            if hook.resolved_cursor is None:  # a webhook made before resolved events: from now on
                hook.resolved_cursor = hook.cursor
            new = session.execute(select(Alert.id, Alert.kind).where(Alert.id > hook.cursor)
                                  .order_by(Alert.id)).all()
            for alert_id, kind in new:
                if OPENED in events and (not kinds or kind in kinds):
                    self._queue(session, hook.id, alert_id, OPENED)
            if new:
                hook.cursor = new[-1].id
            sent = exists().where(WebhookDelivery.webhook_id == hook.id, WebhookDelivery.alert_id == Alert.id,
                                  WebhookDelivery.event == RESOLVED)
            pending = session.execute(select(Alert.id, Alert.kind, Alert.status).where(
                Alert.id > hook.resolved_cursor, Alert.id <= hook.cursor, ~sent).order_by(Alert.id)).all()
            for alert_id, kind, status in pending:
                if status == "closed" and RESOLVED in events and (not kinds or kind in kinds):
                    self._queue(session, hook.id, alert_id, RESOLVED)
            still_open = [alert_id for alert_id, _kind, status in pending if status != "closed"]
            hook.resolved_cursor = still_open[0] - 1 if still_open else hook.cursor

    def _queue(self, session: Session, hook_id: int, alert_id: int, event: str) -> None:
        session.add(WebhookDelivery(webhook_id=hook_id, alert_id=alert_id, event=event, state="pending",
                                    attempts=0, next_attempt_at=self._clock(), history=[]))

    def _attempt(self, delivery_id: int) -> None:
        with self._sessions() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            hook = session.get(Webhook, delivery.webhook_id) if delivery else None
            alert = session.get(Alert, delivery.alert_id) if delivery else None
            if delivery is None or hook is None or alert is None:
                return
            url, secret, event = hook.url, hook.secret, delivery.event
            body = alert_body(alert, delivery.id, event)
        status, error, started = None, None, time.monotonic()
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "edgefleet-webhooks", "X-Edgefleet-Event": event,
            "X-Edgefleet-Delivery": str(delivery_id), "X-Edgefleet-Signature": signature(secret, body)})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                status = response.status
        except urllib.error.HTTPError as err:
            status, error = err.code, f"HTTP {err.code}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"[:500]
        seconds = time.monotonic() - started
        ok = status is not None and 200 <= status < 300
        with self._sessions.begin() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            if delivery is None:
                return
            delivery.attempts += 1
            delivery.last_status, delivery.last_error = status, None if ok else error
            delivery.history = [*delivery.history, {"at": self._clock(), "status": status, "error": error,
                                                    "seconds": round(seconds, 4)}][-HISTORY:]
            if ok:
                delivery.state, delivery.delivered_at = "delivered", self._clock()
            elif delivery.attempts >= self.max_attempts:
                delivery.state = "failed"
                log.warning("webhook %s: alert %s undelivered after %d attempts (%s)", url, delivery.alert_id,
                            delivery.attempts, error)
            else:
                delivery.next_attempt_at = self._clock() + self.retry_base * 2 ** (delivery.attempts - 1)
