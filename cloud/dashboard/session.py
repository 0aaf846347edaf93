"""Dashboard sessions: sign in once with an API token, then a signed, HttpOnly, SameSite=Strict cookie.

The token is posted once (the sign-in form) and never set in a URL, a page or the cookie. The cookie
holds a random session id and its HMAC under a key made when the app starts; the session itself (token
name, role, CSRF token, expiry) lives in this process's `SessionStore`, so expiry is the server's
decision and logout ends the session at once. A restart of the cloud signs everyone out.

Every POST passes `checked_form`: the Origin header must be this server's own origin (a browser sends it
with every form POST; a request without one is refused too) and the form's `csrf` field must equal the
session's CSRF token (or, on the sign-in form, the pre-session cookie's).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import Request

from edgefleet.core.errors import EdgefleetError

COOKIE = "edgefleet_session"
LOGIN_COOKIE = "edgefleet_login"  # the sign-in form's CSRF token, before there is a session
SESSION_SECONDS = 8 * 3600
MAX_SESSIONS = 10_000  # the oldest is dropped beyond this
MAX_FORM_BYTES = 16 * 1024


class DashboardRefusal(EdgefleetError):
    """A dashboard request refused: `status` is its HTTP status (403 for CSRF, Origin or role)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Session:
    name: str  # the token's name
    role: str  # "admin" or "viewer"
    csrf: str
    expires: float

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class SessionStore:
    """The signed-in sessions of one app, by session id; thread-safe (routes run in a thread pool)."""

    def __init__(self, lifetime: float = SESSION_SECONDS) -> None:
        self.lifetime = lifetime
        self._key = secrets.token_bytes(32)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def sign(self, value: str) -> str:
        return f"{value}.{hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()}"

    def unsign(self, signed: str | None) -> str | None:
        value, _, mac = (signed or "").rpartition(".")
        return value if value and hmac.compare_digest(self.sign(value), signed or "") else None

    def open(self, name: str, role: str) -> str:
        """A new session; returns the cookie value."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self._sessions = {k: v for k, v in self._sessions.items() if v.expires > now}
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[session_id] = Session(name, role, secrets.token_urlsafe(24), now + self.lifetime)
        return self.sign(session_id)

    def get(self, cookie: str | None) -> Session | None:
        session_id = self.unsign(cookie)
        if session_id is None:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= time.time():
                del self._sessions[session_id]
                return None
        return session

    def close(self, cookie: str | None) -> None:
        session_id = self.unsign(cookie)
        if session_id is not None:
            with self._lock:
                self._sessions.pop(session_id, None)


def store(request: Request) -> SessionStore:
    return request.app.state.dashboard_sessions


def current(request: Request) -> Session | None:
    return store(request).get(request.cookies.get(COOKIE))


def cookie_options(request: Request) -> dict:
    return {"httponly": True, "samesite": "strict", "secure": request.url.scheme == "https", "path": "/"}


def local_path(value: str) -> str:
    """value if it is a path on this site, else "/": never a redirect elsewhere (`//host`, `/\\host`, a scheme)."""
    if not value.startswith("/") or value[1:2] in ("/", "\\") or any(c < " " or c == "\\" for c in value):
        return "/"
    return value


def own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (at most MAX_FORM_BYTES), one value per field; no body is no field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise DashboardRefusal(f"form over {MAX_FORM_BYTES} bytes", 413)
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if body and kind != "application/x-www-form-urlencoded":
        raise DashboardRefusal("the dashboard takes forms only (application/x-www-form-urlencoded)", 415)
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as err:
        raise DashboardRefusal(f"unreadable form: {err}", 400) from err
    return {key: values[0] for key, values in fields.items()}


async def checked_form(request: Request, expected_csrf: str | None) -> dict[str, str]:
    """The POST's form; refuses (403) one from another origin, without an Origin, or without the right CSRF
    token. The origin is checked before a byte of the body is read."""
    check_origin(request)
    form = await read_form(request)
    given = form.get("csrf", "")
    if not expected_csrf or not hmac.compare_digest(given.encode(), expected_csrf.encode()):
        raise DashboardRefusal("missing or wrong CSRF token: reload the page and try again")
    return form


def check_origin(request: Request) -> None:
    origin = request.headers.get("origin")
    if origin != own_origin(request):
        raise DashboardRefusal(f"cross-site request refused: Origin {origin!r} is not {own_origin(request)!r}")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise DashboardRefusal("cross-site request refused: Sec-Fetch-Site is not same-origin")
