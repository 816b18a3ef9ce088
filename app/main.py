"""Application factory: settings, middleware, routers, error handlers, lifespan."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.docs import install_docs
from app.api.v1.endpoints import health, metrics
from app.api.v1.endpoints.items import ATTACHMENT_UPLOAD_PATH
from app.api.v1.router import include_v1
from app.api.v2.router import include_v2
from app.backends import (
    auth_cache,
    email_throttle,
    email_transport,
    login_attempt_store,
    redis_client,
)
from app.core.client_address import ClientAddressMiddleware
from app.core.config import Settings, get_settings
from app.core.exceptions import register_exception_handlers
from app.core.logging import configure_logging
from app.core.middleware import HeadAsGetMiddleware, RequestContextMiddleware
from app.core.ratelimit import RateLimiter, storage_for
from app.core.security import PasswordHasher
from app.core.storage import LocalFileStorage
from app.core.tokens import AccessTokenVerifier
from app.database import Database, SchemaCheck
from app.services.eventing import build_event_runtime
from app.services.items import ItemCreator
from app.services.retention import Pruner

logger = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI application.

    Args:
        settings: Settings to use; defaults to the environment / `.env`.

    Returns:
        The configured application. Its database engine connects lazily and is
        disposed on shutdown.
    """
    settings = settings or get_settings()
    configure_logging(settings.LOG_LEVEL)
    database = Database(settings)

    redis = redis_client(settings)
    transport = email_transport(settings)
    runtime = build_event_runtime(settings, database.sessionmaker, transport, redis)
    hasher = PasswordHasher(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("startup", extra={"environment": settings.ENVIRONMENT})
        if settings.OUTBOX_RELAY_ENABLED:
            runtime.start_relay()
        if settings.PRUNE_INTERVAL_SECONDS:
            runtime.start_pruner(Pruner(database.sessionmaker, settings))
        # Start-up objects (modules, routes, schemas) live forever: moving them out
        # of the collector's generations makes every later full collection, and so
        # the tail latency, cheaper.
        gc.collect()
        gc.freeze()
        yield
        await runtime.shutdown()
        hasher.close()
        if redis is not None:
            await redis.aclose()
        await database.dispose()
        logger.info("shutdown complete")

    openapi_url = f"{settings.API_V1_STR}/openapi.json"
    app = FastAPI(
        title=settings.PROJECT_NAME,
        version=settings.VERSION,
        openapi_url=openapi_url if settings.docs_enabled else None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # Metrics are Prometheus (/metrics) and logs are JSON lines; FastAPI's
        # OpenTelemetry hooks would cost a provider lookup on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.database = database
    app.state.schema = SchemaCheck()  # the head, read from the scripts once
    app.state.item_creator = ItemCreator(
        database.sessionmaker, settings.idempotency_ttl
    )
    app.state.password_hasher = hasher
    app.state.login_attempts = login_attempt_store(settings, redis)
    app.state.auth_cache = auth_cache(settings, redis)
    app.state.token_verifier = AccessTokenVerifier(settings)
    app.state.rate_limiter = RateLimiter(
        storage_for(settings.REDIS_URL),
        enabled=settings.RATE_LIMIT_ENABLED,
        prefix=f"{settings.REDIS_KEY_PREFIX}rl",
    )
    app.state.email_throttle = email_throttle(settings)
    app.state.storage = LocalFileStorage(settings.STORAGE_DIR)
    app.state.redis = redis
    app.state.email_transport = transport
    app.state.events = runtime

    register_exception_handlers(app)
    app.include_router(health.router)
    if settings.METRICS_ENABLED:
        app.include_router(metrics.router)
    include_v1(app, settings.API_V1_STR)
    include_v2(app, "/api/v2")
    if settings.docs_enabled:
        install_docs(app, openapi_url=openapi_url, title=settings.PROJECT_NAME)

    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.MAX_REQUEST_BODY_BYTES,
        large_bodies=[
            # Uploads may exceed the JSON limit: file size plus multipart framing.
            (ATTACHMENT_UPLOAD_PATH, settings.ATTACHMENT_MAX_BYTES + 64 * 1024),
        ],
        hsts=settings.ENVIRONMENT == "production",
    )
    if settings.BACKEND_CORS_ORIGINS:
        # Outermost, so even error responses carry the CORS headers browsers need.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.BACKEND_CORS_ORIGINS,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "If-Match",
                "Idempotency-Key",
                "X-Request-ID",
                "X-CSRF-Token",
            ],
            expose_headers=[
                "ETag",
                "X-Request-ID",
                "Retry-After",
                "Location",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
        )
    # Outermost: every layer, the access log included, sees the validated address.
    app.add_middleware(
        ClientAddressMiddleware, trusted_hosts=settings.FORWARDED_ALLOW_IPS
    )
    return app
