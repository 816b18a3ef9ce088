"""Housekeeping: delete what ended long enough ago, so no table grows forever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.metrics import ROWS_PRUNED
from app.models.base import utcnow
from app.repositories import retention
from app.repositories.retention import Cutoffs, Prunable

logger = logging.getLogger("app.housekeeping")


def cutoffs(settings: Settings, now: datetime) -> Cutoffs:
    """The cutoffs of a pass made at `now` under `settings`."""
    ended = now - timedelta(days=settings.RETENTION_DAYS)
    idle = settings.refresh_idle_timeout
    return Cutoffs(
        ended=ended,
        idle_session_used=ended - idle,
        processed=now - timedelta(days=settings.PROCESSED_EVENT_RETENTION_DAYS),
        idempotency=now - settings.idempotency_ttl,
    )


class Pruner:
    """Deletes ended rows in bounded transactions; several may run side by side."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
    ) -> None:
        """Prune through `sessionmaker` with the retention `settings`."""
        self.sessionmaker = sessionmaker
        self.settings = settings

    async def prune(self, now: datetime | None = None) -> dict[str, int]:
        """One pass over every table.

        Args:
            now: The moment the cutoffs count back from (default: now).

        Returns:
            Rows deleted, by table name.
        """
        targets = retention.prunable(cutoffs(self.settings, now or utcnow()))
        deleted = {name: await self._drain(target) for name, target in targets.items()}
        for name, count in deleted.items():
            ROWS_PRUNED.labels(name).inc(count)
        logger.info(
            "prune_finished", extra={"event": "prune_finished", "deleted": deleted}
        )
        return deleted

    async def _drain(self, target: Prunable) -> int:
        # One transaction per batch: locks are short, and a pass interrupted
        # half-way keeps what it has done.
        total = 0
        batch = self.settings.PRUNE_BATCH_SIZE
        while True:
            async with self.sessionmaker() as session:
                count = await retention.delete_batch(session, target, batch)
                await session.commit()
            total += count
            if count < batch:
                return total

    async def run(self, stop: asyncio.Event) -> None:
        """Prune now, then every `PRUNE_INTERVAL_SECONDS`, until `stop` is set."""
        while not stop.is_set():
            try:
                await self.prune()
            except Exception:  # database hiccup: log, try again next time
                logger.exception("prune pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), self.settings.PRUNE_INTERVAL_SECONDS
                )
