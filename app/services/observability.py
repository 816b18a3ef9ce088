"""Numbers for /metrics that are read on demand: pool use, outbox backlog."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.pool import QueuePool

from app.core import metrics
from app.core.email import EmailTransport
from app.models.base import utcnow
from app.repositories import outbox


async def refresh_gauges(
    engine: AsyncEngine,
    sessionmaker: async_sessionmaker[AsyncSession],
    transport: EmailTransport,
    max_attempts: int,
) -> None:
    """Update the gauges that describe state rather than count events."""
    pool = engine.sync_engine.pool
    if isinstance(pool, QueuePool):
        metrics.DB_POOL_CHECKED_OUT.set(pool.checkedout())
        metrics.DB_POOL_SIZE.set(pool.checkedin() + pool.checkedout())
    async with sessionmaker() as session:
        pending, oldest, dead = await outbox.backlog(session, max_attempts)
    metrics.OUTBOX_BACKLOG.set(pending)
    metrics.OUTBOX_DEAD.set(dead)
    age = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
    metrics.OUTBOX_OLDEST_AGE.set(max(age, 0.0))
    metrics.CIRCUIT_OPEN.set(0 if transport.breaker_state == "closed" else 1)
