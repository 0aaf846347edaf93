"""Enrollment tokens: how a fleet of thousands registers itself, instead of one admin `curl` per device.

An admin makes a token for a fleet (and optionally a group), with an expiry and a number of uses. The
token is baked into the device image; on first start each device calls `POST /api/v1/enroll` with it
(`edgefleet device enroll`) and gets its own MQTT credentials, exactly as an admin registration hands
them out. The token itself never reaches MQTT and grants nothing else: not the API, not another
device's identity.

- Only the SHA-256 of a token is stored (like API tokens); the token is shown once, at creation.
- A use is counted by one conditional UPDATE (`uses < max_uses`, not revoked, not expired) in the same
  transaction that creates the device: two devices racing for the last use cannot both get it, and a
  registration that fails (the id is taken) gives its use back by rolling back.
- Revoking a token stops further enrollments at once; devices enrolled with it keep their credentials
  (revoke those one by one).
"""

from __future__ import annotations

import secrets

from sqlalchemy import Float, Integer, String, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from edgefleet.cloud.auth import hash_token
from edgefleet.cloud.db import Base, now
from edgefleet.core.errors import EdgefleetError

TOKEN_PREFIX = "efe_"  # tells an enrollment token from an API token at a glance (and in a leaked log)
MAX_USES = 1_000_000
MAX_SECONDS = 366 * 86400


class EnrollmentError(EdgefleetError):
    """An enrollment token that is unknown, expired, revoked or used up (the API answers 401)."""


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    fleet: Mapped[str] = mapped_column(String(64))
    group: Mapped[str | None] = mapped_column("device_group", String(64), nullable=True)
    max_uses: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)

    def state(self, at: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if at >= self.expires_at:
            return "expired"
        return "used up" if self.uses >= self.max_uses else "active"


def create(session: Session, *, fleet: str, group: str | None, max_uses: int, expires_in: float,
           created_by: str | None) -> tuple[EnrollmentToken, str]:
    """A new token's row (added to the session) and the token itself, which only this call ever sees."""
    if not 1 <= max_uses <= MAX_USES:
        raise EdgefleetError(f"max_uses must be between 1 and {MAX_USES}, got {max_uses}")
    if not 0 < expires_in <= MAX_SECONDS:
        raise EdgefleetError(f"expires_in_seconds must be above 0 and at most {MAX_SECONDS} (a year), got {expires_in}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = EnrollmentToken(token_hash=hash_token(token), fleet=fleet, group=group, max_uses=max_uses,
                          expires_at=now() + expires_in, created_by=created_by)
    session.add(row)
    return row, token


def find(session: Session, token: str | None) -> EnrollmentToken:
    """The row of a token that can enroll a device now; EnrollmentError saying why not otherwise."""
    if not token or not token.startswith(TOKEN_PREFIX):
        raise EnrollmentError("an enrollment token is required (Authorization: Bearer efe_...)")
    row = session.scalar(select(EnrollmentToken).where(EnrollmentToken.token_hash == hash_token(token)))
    if row is None:
        raise EnrollmentError("unknown enrollment token")
    state = row.state(now())
    if state != "active":
        raise EnrollmentError(f"enrollment token {row.id} is {state}")
    return row


def use(session: Session, token: str | None) -> EnrollmentToken:
    """Counts one use of the token inside the caller's transaction (commit with the new device)."""
    row = find(session, token)
    counted = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == row.id, EnrollmentToken.uses < EnrollmentToken.max_uses,
               EnrollmentToken.revoked_at.is_(None), EnrollmentToken.expires_at > now())
        .values(uses=EnrollmentToken.uses + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    if counted != 1:  # another device took the last use between the check and the update
        raise EnrollmentError(f"enrollment token {row.id} is used up")
    return row


def check(sessions: sessionmaker, token: str | None) -> None:
    """The request guard's check of `POST /api/v1/enroll` before its body is read: the one /api/v1 route
    an enrollment token opens instead of the admin token."""
    with sessions() as session:
        find(session, token)
