"""The request guard: what an HTTP request with a body meets before any route sees it, so that hostile
input costs bounded work and gets one 4xx line.

A request carries a body when it has a Content-Length above 0 or a Transfer-Encoding. For such a
request, in this order:

1. Below /api/v1 the admin token in its Authorization header is checked first (401): an anonymous
   client never makes the server parse or keep a byte of its body. (The routes a device reaches
   without the token: the bundle download with a signed URL, a GET without a body; and
   `POST /api/v1/enroll`, whose enrollment token is checked here instead, edgefleet.cloud.enrollment.)
2. The route's cap (`body_limit`): the bundle upload takes settings' `max_bundle_bytes`, every other
   route `max_json_bytes` (1 MiB; a deployment is well under 10 KiB). A Content-Length over the cap is
   a 413 at once; a body sent without a length (chunked) is counted as it arrives and refused at the cap.
3. Every /api/v1 route but the bundle upload takes JSON: the body must be `application/json` (415), and
   it is read (at most the cap) and parsed with `edgefleet.core.bounded_json` (400 with its reason: not
   UTF-8, not JSON, NaN or Infinity, an integer outside int64, nesting deeper than MAX_JSON_DEPTH).
   FastAPI and pydantic then get exactly those bytes, known to be JSON within limits. Outside /api/v1
   only the dashboard's forms take a body (urlencoded; edgefleet.cloud.dashboard.session reads at most
   16 KiB of it, after checking the session and Origin); it reaches them capped, unparsed.

Any response that starts before its request's body was read in full (every refusal above, a 413 while
the upload streams, a route that ignores a body) closes the connection after a bounded linger
(`Exchange`: at most LINGER_BYTES read and dropped, for at most LINGER_SECONDS, so that a client still
sending reads the answer rather than a reset), so the rest of an unwanted body is never waited for.
The upload streams its own body: it gets a receive channel that raises TooLargeError at the cap, which
the app's handler turns into the same 413.
"""

from __future__ import annotations

import logging

import anyio
from sqlalchemy.orm import sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.cloud import enrollment
from edgefleet.cloud.api import API_PREFIX
from edgefleet.cloud.api.deps import TooLargeError, UnsupportedMediaTypeError
from edgefleet.cloud.api.errors import error_response, status_for
from edgefleet.cloud.auth import authenticate, bearer_token
from edgefleet.cloud.device_auth import DEVICE_PREFIX, authenticate_device
from edgefleet.core import bounded_json
from edgefleet.core.errors import EdgefleetError

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = 16
UPLOAD_ROUTE = ("POST", f"{API_PREFIX}/bundles")
ENROLL_ROUTE = ("POST", f"{API_PREFIX}/enroll")
LINGER_BYTES = 8 << 20  # of a refused body, read and dropped before the connection closes ...
LINGER_SECONDS = 2.0  # ... for at most this long


class RequestGuard:
    """ASGI middleware; create_app installs it with the app's session factory and size caps."""

    def __init__(self, app: ASGIApp, *, sessions: sessionmaker, max_bundle_bytes: int, max_json_bytes: int,
                 max_capture_bytes: int | None = None) -> None:
        self.app = app
        self.sessions = sessions
        self.max_bundle_bytes = max_bundle_bytes
        self.max_json_bytes = max_json_bytes
        self.max_capture_bytes = max_capture_bytes or max_json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(headers := Headers(scope=scope)):
            await self.app(scope, receive, send)
            return
        exchange = Exchange(receive, send)
        method, path = scope["method"], scope["path"]
        try:
            api = path == API_PREFIX or path.startswith(API_PREFIX + "/")
            if path.startswith(DEVICE_PREFIX):  # a device's own routes: its credentials, not the admin token
                await run_in_threadpool(authenticate_device, self.sessions, headers.get("authorization"))
            elif api:  # the enroll route takes an enrollment token instead of the admin token
                check = enrollment.check if (method, path) == ENROLL_ROUTE else authenticate
                await run_in_threadpool(check, self.sessions, bearer_token(headers.get("authorization")))
            limit, what = self.body_limit(method, path)
            check_declared_length(headers, limit, what)
            if (method, path) == UPLOAD_ROUTE or not api:  # outside /api/v1: the dashboard's forms only
                app_receive = capped(exchange.receive, limit, what)
            else:
                app_receive = await checked_json(headers, exchange.receive, limit, what)
        except HTTPException as err:  # the 401
            log.info("%s %s -> %d before reading the body: %s", method, path, err.status_code, err.detail)
            await error_response(err.status_code, err.detail, err.headers)(scope, exchange.receive, exchange.send)
            return
        except EdgefleetError as err:
            code = status_for(err)
            log.info("%s %s -> %d: %s", method, path, code, err)
            await error_response(code, str(err))(scope, exchange.receive, exchange.send)
            return
        await self.app(scope, app_receive, exchange.send)

    def body_limit(self, method: str, path: str) -> tuple[int, str]:
        """The route's body cap in bytes, and how a refusal names that cap."""
        if (method, path) == UPLOAD_ROUTE:
            limit = self.max_bundle_bytes
            return limit, f"this registry's limit of {limit} bytes (max_bundle_bytes)"
        if path.startswith(DEVICE_PREFIX):
            limit = self.max_capture_bytes
            return limit, f"the limit of {limit} bytes for a device's upload (max_capture_upload_bytes)"
        return self.max_json_bytes, f"the limit of {self.max_json_bytes} bytes for a JSON request body (max_json_bytes)"


class Exchange:
    """One request with a body and its response. A response that starts before the whole body arrived
    (a refusal) gets `Connection: close`; before the connection closes, up to LINGER_BYTES of the rest
    are read and dropped for at most LINGER_SECONDS, so that a client still sending (httpx sends the
    whole body before it reads) reads the refusal instead of a connection reset."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.body_done = False
        self.closing = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self.body_done:
            self.closing = True
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        elif message["type"] == "http.response.body" and self.closing and not message.get("more_body", False):
            await self._send({**message, "more_body": True})
            await self._linger()
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await self._send(message)

    async def _linger(self) -> None:
        dropped = 0
        with anyio.move_on_after(LINGER_SECONDS):
            while not self.body_done and dropped <= LINGER_BYTES:
                dropped += len((await self.receive()).get("body", b""))


def has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


def too_large(size: int | None, what: str) -> TooLargeError:
    body = f"request body of {size} bytes" if size is not None else "request body"
    return TooLargeError(f"{body} is larger than {what}")


def check_declared_length(headers: Headers, limit: int, what: str) -> None:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:  # the server checked the syntax
        raise too_large(int(declared), what)


def capped(receive: Receive, limit: int, what: str) -> Receive:
    """receive that raises TooLargeError once more than `limit` body bytes have arrived."""
    seen = 0

    async def receive_capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large(None, what)
        return message

    return receive_capped


async def checked_json(headers: Headers, receive: Receive, limit: int, what: str) -> Receive:
    """Reads the whole body (at most `limit` bytes) and parses it with bounded_json; returns a receive
    that hands the route those same bytes. Raises the 415, 413 or 400."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise UnsupportedMediaTypeError(f"send the request body as JSON with Content-Type application/json, "
                                        f"not {content_type or 'no Content-Type'}")
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: hand the route what it would see
            return replay(message, receive)
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise too_large(None, what)
    bounded_json.loads(body, max_bytes=limit, max_depth=MAX_JSON_DEPTH, what="request body")
    return replay({"type": "http.request", "body": bytes(body), "more_body": False}, receive)


def replay(first: Message, receive: Receive) -> Receive:
    """receive that returns `first`, then whatever the connection sends next (the disconnect)."""
    pending = [first]

    async def receive_replayed() -> Message:
        return pending.pop() if pending else await receive()

    return receive_replayed
