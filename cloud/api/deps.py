"""What every router shares: dependencies as `Annotated` aliases, and the errors handlers raise.

The app keeps its settings, session factory and trust store on `app.state` (set by `create_app`);
handlers get them through these aliases, never through globals. Errors derive from EdgefleetError, so
one exception handler (in app.py) turns each into its 4xx status with the message as `detail`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.signing import TrustStore


class NotFoundError(EdgefleetError):
    """The named device, bundle or fleet does not exist (404)."""


class ConflictError(EdgefleetError):
    """The thing to create exists already (409)."""


class TooLargeError(EdgefleetError):
    """A request body over its limit (413)."""


class UnsupportedMediaTypeError(EdgefleetError):
    """A request body of a content type the route does not take (415)."""


def get_settings(request: Request) -> CloudSettings:
    return request.app.state.settings


def get_sessions(request: Request) -> sessionmaker:
    return request.app.state.sessions


def get_trust(request: Request) -> TrustStore:
    return request.app.state.trust


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[CloudSettings, Depends(get_settings)]
SessionsDep = Annotated[sessionmaker, Depends(get_sessions)]
SessionDep = Annotated[Session, Depends(get_session)]
TrustDep = Annotated[TrustStore, Depends(get_trust)]
