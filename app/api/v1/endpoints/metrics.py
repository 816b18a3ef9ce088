"""`GET /metrics`: Prometheus text, optionally behind a bearer token."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import DatabaseDep, SettingsDep
from app.core.exceptions import NotAuthenticatedError
from app.core.tokens import same_secret
from app.services.observability import refresh_gauges

router = APIRouter(tags=["health"])


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(
    request: Request, settings: SettingsDep, database: DatabaseDep
) -> Response:
    """Request counts and latencies, pool use, outbox backlog, events, email."""
    if settings.METRICS_TOKEN is not None:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not same_secret(sent, settings.METRICS_TOKEN.get_secret_value()):
            raise NotAuthenticatedError
    await refresh_gauges(
        database.engine,
        database.sessionmaker,
        request.app.state.email_transport,
        settings.EVENT_MAX_DELIVERIES,
    )
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
