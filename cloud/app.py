"""The FastAPI application factory. `CloudServer` serves what `create_app` returns; nothing here is global.

To serve the API alone (for example as stateless replicas behind a load balancer, with the broker,
ingest and drift monitor running elsewhere): `uvicorn --factory edgefleet.cloud.app:app_from_env`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.api import api_routers
from edgefleet.cloud.api.deps import ConflictError, NotFoundError, TooLargeError, UnsupportedMediaTypeError
from edgefleet.cloud.db import make_engine, make_sessions
from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.errors import EdgefleetError, VerificationError
from edgefleet.core.signing import TrustStore

log = logging.getLogger(__name__)

# The first class an error is an instance of decides its status; any other EdgefleetError is a 400.
ERROR_STATUS: tuple[tuple[type[EdgefleetError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (VerificationError, 422),
)


def status_for(err: EdgefleetError) -> int:
    if isinstance(err, VerificationError) and err.reason == "too_large":
        return 413
    return next((code for cls, code in ERROR_STATUS if isinstance(err, cls)), 400)


async def _edgefleet_error(request: Request, err: Exception) -> JSONResponse:
    code = status_for(err)  # registered for EdgefleetError only
    log.info("%s %s -> %d: %s", request.method, request.url.path, code, err)
    return JSONResponse({"detail": str(err)}, status_code=code)


def create_app(settings: CloudSettings, sessions: sessionmaker | None = None) -> FastAPI:
    """The API over settings' database (or the given session factory, which the caller then owns).

    Loads the trusted keys now, so a missing or malformed key file fails here rather than at upload.
    """
    trust = TrustStore.from_paths(settings.trusted_keys)
    engine = None
    if sessions is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        sessions = make_sessions(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if engine is not None:
            engine.dispose()

    app = FastAPI(title="edgefleet cloud", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.trust = trust
    app.add_exception_handler(EdgefleetError, _edgefleet_error)
    for router in api_routers():
        app.include_router(router)
    return app


def app_from_env() -> FastAPI:
    """The API configured from EDGEFLEET_* environment variables (for `uvicorn --factory`)."""
    return create_app(CloudSettings())
