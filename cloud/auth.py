"""API tokens: random bearer tokens of which the database keeps only the SHA-256.

The first start of the service creates an admin token and hands it back once (the CLI prints it); after
that only `create_token` makes more. A token has a role: "admin" (the API and the dashboard) or "viewer"
(the dashboard's pages only, read-only: the API answers a viewer token with 403). `AdminAuth` is the
FastAPI dependency every `/api/v1` route sits behind; `authenticate` is the check itself, which the
request guard (edgefleet.cloud.request_guard) also runs on the headers of a request with a body before
any of that body is read.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.db import ApiToken

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
ADMIN_TOKEN_NAME = "admin"
ADMIN, VIEWER = "admin", "viewer"
ROLES = (ADMIN, VIEWER)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(sessions: sessionmaker, name: str = ADMIN_TOKEN_NAME, role: str = ADMIN) -> str:
    """Stores a new token's hash and returns the token itself: the only time anyone sees it."""
    if role not in ROLES:
        raise ValueError(f"token role: expected one of {', '.join(ROLES)}, got {role!r}")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with sessions.begin() as session:
        session.add(ApiToken(name=name[:64], token_hash=hash_token(token), role=role))
    log.info("created %s API token %r", role, name)
    return token


def ensure_admin_token(sessions: sessionmaker) -> str | None:
    """Creates the first admin token and returns it; returns None when any token exists already."""
    with sessions() as session:
        if session.scalar(select(func.count()).select_from(ApiToken)):
            return None
    return create_token(sessions, ADMIN_TOKEN_NAME)


def token_identity(sessions: sessionmaker, token: str) -> tuple[str, str] | None:
    """The token's (name, role), or None when it is not a valid token."""
    if not token:
        return None
    digest = hash_token(token)
    with sessions() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return row.name, row.role or ADMIN


def token_name(sessions: sessionmaker, token: str) -> str | None:
    """The name of the token if it is a valid admin token, else None."""
    identity = token_identity(sessions, token)
    return identity[0] if identity is not None and identity[1] == ADMIN else None


def check_token(sessions: sessionmaker, token: str) -> bool:
    return token_name(sessions, token) is not None


_bearer = HTTPBearer(auto_error=False, description="An admin API token (`edgefleet cloud token` makes one)")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive), else None."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def authenticate(sessions: sessionmaker, token: str | None) -> str:
    """The admin token's name; raises the 401 (with `WWW-Authenticate: Bearer`) for a missing or wrong token.

    Both the route dependency and the request guard (which runs before any body is read) call this."""
    if token is None:
        raise _unauthorized("missing bearer token: send 'Authorization: Bearer <admin token>'")
    identity = token_identity(sessions, token)
    if identity is None:
        raise _unauthorized("invalid admin token")
    if identity[1] != ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail="a viewer token opens the dashboard only; the API needs an admin token")
    return identity[0]


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The calling token's name; 401 with `WWW-Authenticate: Bearer` for a missing or wrong token."""
    return authenticate(request.app.state.sessions, credentials.credentials if credentials else None)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": "Bearer"})


AdminAuth = Annotated[str, Depends(require_admin)]
