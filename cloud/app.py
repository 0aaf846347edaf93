"""The FastAPI application factory. `CloudServer` serves what `create_app` returns; nothing here is global.

To serve the API alone (stateless replicas behind a load balancer, with the broker, ingest and monitors
running elsewhere): `edgefleet cloud up --role api` (cloud/roles.py), or under another ASGI server
`uvicorn --factory edgefleet.cloud.app:app_from_env`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.orm import sessionmaker

from edgefleet.cloud.api import api_routers
from edgefleet.cloud.api.errors import install_error_handlers
from edgefleet.cloud.dashboard import mount_dashboard
from edgefleet.cloud.db import make_engine, make_sessions
from edgefleet.cloud.request_guard import RequestGuard
from edgefleet.cloud.settings import CloudSettings
from edgefleet.core.signing import TrustStore


def create_app(settings: CloudSettings, sessions: sessionmaker | None = None) -> FastAPI:
    """The API over settings' database (or the given session factory, which the caller then owns).

    Loads the trusted keys now, so a missing or malformed key file fails here rather than at upload. Every
    request with a body passes the RequestGuard first (auth from headers, size caps, bounded JSON), and
    every error is answered by edgefleet.cloud.api.errors: a 4xx with one line, never a traceback.
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
    app.add_middleware(RequestGuard, sessions=sessions, max_bundle_bytes=settings.max_bundle_bytes,
                       max_json_bytes=settings.max_json_bytes, max_capture_bytes=settings.max_capture_upload_bytes)
    install_error_handlers(app)
    for router in api_routers():
        app.include_router(router)
    mount_dashboard(app)  # the pages at /, signed in with an API token once (edgefleet.cloud.dashboard)
    return app


def app_from_env() -> FastAPI:
    """The API configured from EDGEFLEET_* environment variables (for `uvicorn --factory`)."""
    return create_app(CloudSettings())
