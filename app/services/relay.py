"""The outbox relay: publish committed events, in order per aggregate, once each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.events import EventPublisher
from app.core.exceptions import DependencyUnavailableError
from app.models.base import utcnow
from app.models.outbox import OutboxEvent
from app.repositories import outbox
from app.services.events import to_event

logger = logging.getLogger("app.events")
# Waiting for a transport (Redis) to come back never exceeds this.
MAX_TRANSPORT_BACKOFF_SECONDS = 5.0
# How long a relay may take to publish what it claimed (SQLite's lease, see
# `outbox.claim_batch`) before another may take it over: far above a batch's
# publishing time, and the wait for events a crashed relay had claimed.
CLAIM_LEASE = timedelta(minutes=5)
GATHER_SECONDS = 0.05
"""Pause after a pass that found less than a batch: the next one carries more.

Under a steady stream of writes a relay that went round at once published a
handful of events per pass, and its passes (claim, publish, mark, commit)
took 8 % of the process; events still wait at most this long more, and an
idle relay waits `OUTBOX_POLL_SECONDS` anyway.
"""


class OutboxRelay:
    """Moves outbox rows to a publisher; several relays may run side by side."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
        *,
        batch_size: int = 100,
        max_attempts: int = 5,
        retry_base_seconds: float = 1.0,
    ) -> None:
        """Relay through `publisher`, `batch_size` events per transaction."""
        self.sessionmaker = sessionmaker
        self.publisher = publisher
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds

    async def publish_pending(self) -> int:
        """One pass: claim a batch, publish it, mark what went out. Returns count."""
        async with self.sessionmaker() as session:
            rows = await outbox.claim_batch(
                session,
                utcnow(),
                limit=self.batch_size,
                max_attempts=self.max_attempts,
                lease=CLAIM_LEASE,
            )
            if rows and not outbox.claims_with_locks(session):
                await session.commit()  # the lease must be seen before publishing
            published = []
            for row in rows:
                if await self._publish(row):
                    published.append(row.id)
            await outbox.mark_published(session, published, utcnow())
            await session.commit()
            return len(published)

    async def _publish(self, row: OutboxEvent) -> bool:
        try:
            await self.publisher.publish(to_event(row))
        except DependencyUnavailableError as exc:
            # Redis, or (handlers in process) the mail server, is down: wait for
            # it without using up attempts, however long the outage lasts.
            self._postpone(row, exc, MAX_TRANSPORT_BACKOFF_SECONDS, count=False)
            return False
        except Exception as exc:  # a handler failed (in-process delivery)
            delay = self.retry_base_seconds * 2**row.attempts
            self._postpone(row, exc, delay, count=True)
            return False
        return True

    def _postpone(
        self, row: OutboxEvent, error: Exception, delay: float, *, count: bool
    ) -> None:
        if count:
            row.attempts += 1
        row.last_error = f"{type(error).__name__}: {error}"[:2000]
        row.next_attempt_at = utcnow() + timedelta(seconds=delay)
        level = logging.ERROR if row.attempts >= self.max_attempts else logging.WARNING
        logger.log(
            level,
            "event_publish_failed",
            extra={
                "event": "event_publish_failed",
                "event_id": row.event_id,
                "event_type": row.event_type,
                "attempts": row.attempts,
                "error": type(error).__name__,
                "dead": row.attempts >= self.max_attempts,
            },
        )

    async def run(self, stop: asyncio.Event, poll_seconds: float) -> None:
        """Publish until `stop` is set; never dies on a transient error."""
        while not stop.is_set():
            try:
                sent = await self.publish_pending()
            except Exception:  # database hiccup: log, wait, try again
                logger.exception("outbox relay pass failed")
                sent = 0
            if sent < self.batch_size:
                pause = poll_seconds if sent == 0 else min(GATHER_SECONDS, poll_seconds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
