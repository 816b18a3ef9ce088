"""Liveness and readiness probes (seed 002's probe format, outside the envelope)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.api.deps import DatabaseDep, SettingsDep
from app.core.exceptions import (
    COMMON_ERROR_RESPONSES,
    ERROR_RESPONSE,
    ServiceUnavailableError,
)
from app.services.health import check_readiness

router = APIRouter(tags=["health"], responses=COMMON_ERROR_RESPONSES)


class HealthOut(BaseModel):
    """Liveness answer."""

    status: Literal["healthy"] = "healthy"
    service: str
    version: str


class ReadyOut(BaseModel):
    """Readiness answer: every component the instance needs answered.

    `degraded` when an optional one (Redis) did not: the instance serves.
    """

    status: Literal["ready", "degraded"] = "ready"
    components: dict[str, str]


@router.get("/health", summary="Liveness probe")
async def health(settings: SettingsDep) -> HealthOut:
    """Answer 200 while the process runs; touches no dependency."""
    return HealthOut(service=settings.PROJECT_NAME, version=settings.VERSION)


@router.get(
    "/ready",
    summary="Readiness probe",
    responses={
        503: {
            **ERROR_RESPONSE,
            "description": "The database is down or its schema is not at the "
            "migrations' head",
        }
    },
)
async def ready(
    request: Request, settings: SettingsDep, database: DatabaseDep
) -> ReadyOut:
    """Answer 200 when the database answers in time, at the migrations' head.

    503 when it does not answer, or its schema is not at the head (the
    `database` detail names its revision and the expected one).

    Redis, when configured, is probed and reported but does not make the
    instance unready: without it the API still serves (see
    `check_readiness`), so the answer is 200 with status `degraded` and
    `redis: "down: <reason>"`; a Redis that may lose events (no AOF, an
    evicting policy) is `redis: "ok (warning: ...)"` and still `ready`. The
    mail circuit breaker is reported too
    (`email`: closed / open / half_open): queued emails wait for the server.
    """
    statuses = await check_readiness(
        database.engine,
        request.app.state.schema,
        settings.REDIS_URL,
        settings.READY_TIMEOUT_SECONDS,
    )
    email = request.app.state.email_transport.breaker_state
    if all(status.ok for status in statuses if status.required):
        components = {
            status.name: status.detail if status.ok else f"down: {status.detail}"
            for status in statuses
        }
        degraded = not all(status.ok for status in statuses)
        return ReadyOut(
            status="degraded" if degraded else "ready",
            components={**components, "email": email},
        )
    details: list[dict[str, Any]] = [
        {"field": status.name, "message": status.detail} for status in statuses
    ]
    details.append({"field": "email", "message": email})
    raise ServiceUnavailableError("Not ready", details=details)
