"""The FastAPI application factory. `uvicorn api.main:app` serves the module-level `app`."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psutil
from fastapi import FastAPI
from sqlmodel import select

from api import __version__, replication
from api.body_limit import BodyLimitMiddleware
from api.errors import install_error_handlers
from api.log import configure_logging, security_event
from api.metrics import Metrics
from api.middleware import REQUEST_ID_HEADER, ApiCORSMiddleware, RequestContextMiddleware
from api.openapi_extras import install_openapi_extras
from api.quotas import SseConnections
from api.ratelimit import LoginRateLimiter
from api.resumable import TUS_REQUEST_HEADERS, TUS_RESPONSE_HEADERS, cleanup_loop
from api.routers import all_routers, ui
from api.security import (
    DEFAULT_ADMIN_PASSWORD,
    InsecureConfigurationError,
    check_production_settings,
    hash_password,
    load_or_create_secret,
    verify_password,
)
from api.uploads import partial_owner
from state.artifacts import store_from_settings
from state.db import create_engine_for, run_migrations, session_factory
from state.settings import Settings, get_settings
from state.users import User

log = logging.getLogger("robopt.api")

# The optimization runner (issue 4) lives in agents/runtime.py with `async start(app)` and
# `async stop(app)`; the foundation runs without it until it exists.
RUNTIME_MODULE = "agents.runtime"

TAGS = [
    {"name": "monitoring", "description": "Health, system status, session metrics, Prometheus metrics."},
    {
        "name": "auth",
        "description": "Log in with JSON or the OAuth2 password form; log out revokes the token.",
    },
    {"name": "users", "description": "User administration (administrators only)."},
    {"name": "models", "description": "Upload, list, download and delete models; attach evaluation data."},
    {
        "name": "uploads",
        "description": "Resumable uploads (tus 1.0) for files of gigabytes; POST /models/from-upload "
        "registers a finished one.",
    },
    {"name": "optimization", "description": "Start, watch, cancel and roll back optimization sessions."},
]

DESCRIPTION = """
REST API of **robopt**, the agentic platform that makes robotics models (OpenVLA, small control
policies) small and fast enough to deploy.

All endpoints except `/health` and `/auth/login` need `Authorization: Bearer <token>`
(use **Authorize** above, or `POST /auth/login` with `{"username", "password"}`).
Every error answers with `{"error", "message", "details"}`; every response carries `X-Request-ID`.
"""


async def bootstrap_admin(app: FastAPI) -> None:
    """Create the configured admin if missing; rotate an existing admin off the default password.

    An admin created earlier with the default password (a development start without
    ADMIN_PASSWORD) gets the configured ADMIN_PASSWORD at the next start that sets one: in production
    that password has already passed `check_production_settings`, so production never runs with
    admin/admin. A password changed to anything else than the default is left alone (the
    administrator may have changed it through the API). Without ADMIN_PASSWORD (development only)
    the default stays, with a warning at every start.
    """
    settings: Settings = app.state.settings
    configured = settings.admin_password
    password = configured or DEFAULT_ADMIN_PASSWORD
    async with app.state.sessionmaker() as db:
        admin = (await db.exec(select(User).where(User.username == settings.admin_username))).first()
        if admin is None:
            hashed = await asyncio.to_thread(hash_password, password)
            db.add(User(username=settings.admin_username, hashed_password=hashed, role="admin"))
            await db.commit()
            log.info("created administrator '%s'", settings.admin_username)
            uses_default = password == DEFAULT_ADMIN_PASSWORD
        else:
            uses_default = await asyncio.to_thread(
                verify_password, DEFAULT_ADMIN_PASSWORD, admin.hashed_password
            )
            if uses_default and configured and configured != DEFAULT_ADMIN_PASSWORD:
                admin.hashed_password = await asyncio.to_thread(hash_password, configured)
                db.add(admin)
                await db.commit()
                uses_default = False
                security_event("admin_default_password_replaced", username=settings.admin_username)
                log.warning(
                    "administrator '%s' still had the default password: replaced by ADMIN_PASSWORD",
                    settings.admin_username,
                )
    if uses_default:
        if (
            settings.environment == "production"
        ):  # unreachable after check_production_settings; belt and braces
            raise InsecureConfigurationError(
                f"refusing to start in production: administrator '{settings.admin_username}' "
                "has the default password. Set ADMIN_PASSWORD."
            )
        log.warning(
            "administrator '%s' has the default password '%s': set ADMIN_PASSWORD "
            "(production refuses to start)",
            settings.admin_username,
            DEFAULT_ADMIN_PASSWORD,
        )


def _runtime_module():  # type: ignore[no-untyped-def]
    # Optional until issue 4 lands; find_spec keeps real import errors inside it visible.
    try:
        if importlib.util.find_spec(RUNTIME_MODULE) is None:
            return None
    except ImportError:  # the `agents` package itself is absent
        return None
    return importlib.import_module(RUNTIME_MODULE)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    check_production_settings(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    app.state.jwt_secret = load_or_create_secret(settings)
    url = settings.resolved_database_url
    await asyncio.to_thread(run_migrations, url)
    app.state.engine = create_engine_for(url)
    app.state.sessionmaker = session_factory(app.state.engine)
    app.state.store = store_from_settings(settings)  # ARTIFACT_STORE: local, a shared directory, s3://
    app.state.started_at = time.monotonic()
    await replication.start(app)  # the event bus and the auth cache (issue 14)
    _remove_stale_partial_uploads(settings)
    await bootstrap_admin(app)
    # Expired resumable uploads are swept now and then every UPLOAD_CLEANUP_INTERVAL_S.
    cleanup = asyncio.create_task(cleanup_loop(app.state.sessionmaker, settings), name="upload-cleanup")
    runtime = _runtime_module()
    if runtime is not None:
        await runtime.start(app)
    replication.attach_event_log(app)
    log.info(
        "robopt %s ready (%s, data in %s)", __version__, settings.environment, settings.data_dir.resolve()
    )
    try:
        yield
    finally:
        cleanup.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await cleanup
        if runtime is not None:
            await runtime.stop(app)
        await replication.stop(app)
        await app.state.engine.dispose()


STALE_UPLOAD_S = 3600


def _remove_stale_partial_uploads(settings: Settings) -> None:
    # Left by a process killed mid-upload; nothing references them. A partial written on this host
    # by a process that is gone goes now; any other only when old: another worker sharing DATA_DIR
    # may be receiving a fresh one right now.
    cutoff = time.time() - STALE_UPLOAD_S
    host = partial_owner().rsplit("-", 1)[0]
    for leftover in settings.uploads_dir.glob(".upload-*"):
        try:
            parts = leftover.name.split("-")
            dead_here = (
                len(parts) >= 4
                and parts[1] == host
                and parts[2].isdigit()
                and not psutil.pid_exists(int(parts[2]))
            )
            if dead_here or leftover.stat().st_mtime < cutoff:
                leftover.unlink(missing_ok=True)
        except OSError:
            pass


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.api_log_level)
    app = FastAPI(
        title="robopt: Robotics Model Optimization Platform API",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.login_limiter = LoginRateLimiter(settings.login_rate_limit, settings.login_rate_window_s)
    app.state.sse_connections = SseConnections(settings.user_max_sse_connections)
    install_error_handlers(app)
    install_openapi_extras(app)  # after the error handlers: wraps their OpenAPI hook
    for router in all_routers():
        app.include_router(router)
    app.include_router(ui.router)  # the dashboard at /ui (api/ui/), outside the API's documentation
    if settings.cors_origins:
        app.add_middleware(
            ApiCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,  # bearer tokens, no cookies
            allow_methods=["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Last-Event-ID",
                REQUEST_ID_HEADER,
                *TUS_REQUEST_HEADERS,
            ],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After", *TUS_RESPONSE_HEADERS],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_body_kb * 1024)
    # Added last so it is the outermost of ours: every response, CORS ones included, gets an id.
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.main:app`: built on first access, so importing this module has no side effects.
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
