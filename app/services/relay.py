"""The outbox relay: publish committed events, in order per aggregate, until handled.

An event published to the Redis stream is not done until the worker has
handled it (`outbox_events.done_at`): the relay checks now and then that the
stream still holds the entries of events not yet done, and publishes again
those Redis lost (a restart without persistence, a failover, eviction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.events import EventPublisher, RedisStreamPublisher
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
UPKEEP_SECONDS = 1.0
"""How often a relay on Redis looks for lost entries and trims the stream."""
UPKEEP_FAILURE_LOG_SECONDS = 60.0
"""At most one log line per this long for an upkeep step that keeps failing."""


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
        handled: Callable[[str], bool] = lambda event_type: True,
        redeliver_after: timedelta = timedelta(seconds=60),
    ) -> None:
        """Relay through `publisher`, `batch_size` events per transaction.

        Args:
            sessionmaker: Database sessions.
            publisher: Where events go.
            batch_size: Events per pass.
            max_attempts: Failed attempts before the relay gives an event up.
            retry_base_seconds: First wait after a failed attempt (doubles).
            handled: Whether an event type has a handler here; one without is
                done once published (nothing will record handling it).
            redeliver_after: How long a published event may stay not done
                before the relay checks that the stream still holds it.
        """
        self.sessionmaker = sessionmaker
        self.publisher = publisher
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
        self.handled = handled
        self.redeliver_after = redeliver_after
        self._upkeep_failure_logged_at = -math.inf
        self._upkeep_failures = 0

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
            done, sent = [], 0
            for row in rows:
                went_out, entry_id = await self._publish(row)
                if not went_out:
                    continue
                sent += 1
                if entry_id is not None and self.handled(row.event_type):
                    self._await_handling(row, entry_id)
                else:  # handled already (in process), or by nothing here
                    done.append(row.id)
            await outbox.mark_published(session, done, utcnow())
            await session.commit()
            return sent

    async def _publish(self, row: OutboxEvent) -> tuple[bool, str | None]:
        """Whether the event went out, and the stream entry a worker still has."""
        try:
            entry_id = await self.publisher.publish(to_event(row))
        except DependencyUnavailableError as exc:
            # Redis, or (handlers in process) the mail server, is down: wait for
            # it without using up attempts, however long the outage lasts.
            self._postpone(row, exc, MAX_TRANSPORT_BACKOFF_SECONDS, count=False)
            return False, None
        except Exception as exc:  # a handler failed (in-process delivery)
            delay = self.retry_base_seconds * 2**row.attempts
            self._postpone(row, exc, delay, count=True)
            return False, None
        return True, entry_id

    def _await_handling(self, row: OutboxEvent, entry_id: str) -> None:
        # Rare (emails): written by the flush, one row each; the bulk of events
        # (no handler here) is marked done in one statement.
        now = utcnow()
        row.published_at = now
        row.stream_id = entry_id
        row.next_attempt_at = now + self.redeliver_after  # the next check

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

    async def recover_lost(self, now: datetime | None = None) -> int:
        """Publish again the due events not done whose stream entries are gone.

        Events still in the stream (waiting for a worker, or pending through a
        mail outage) are checked again `redeliver_after` later: nothing is
        duplicated because a worker is slow. Returns how many were lost (and
        not already made due again by another relay).

        Raises:
            PublishUnavailableError: Redis cannot be reached.
        """
        if not isinstance(self.publisher, RedisStreamPublisher):
            return 0  # in process, publishing was handling
        now = now or utcnow()
        async with self.sessionmaker() as session:
            due = await outbox.due_for_check(session, now, limit=self.batch_size)
            if not due:
                return 0
            held = await self.publisher.held([entry for _, entry in due if entry])
            # Another relay may check the same rows: each update applies only
            # to a row still holding the entry checked here.
            lost = await outbox.unpublish(
                session, [checked for checked in due if checked[1] not in held]
            )
            await outbox.check_later(
                session,
                [checked for checked in due if checked[1] in held],
                now + self.redeliver_after,
            )
            await session.commit()
        if lost:
            logger.warning(
                "events_lost_in_transport",
                extra={"event": "events_lost_in_transport", "count": lost},
            )
        return lost

    async def upkeep(self) -> None:
        """On Redis: publish lost events again, trim what every group acknowledged.

        A step that fails otherwise than by Redis being unreachable (an ACL
        refusing a command, a Redis too old for `XTRIM MINID`, a database
        error) is logged, at most once a minute, and the next step still runs.

        Raises:
            PublishUnavailableError: Redis cannot be reached.
        """
        if not isinstance(self.publisher, RedisStreamPublisher):
            return
        steps: dict[str, Callable[[], Awaitable[object]]] = {
            "recover_lost": self.recover_lost,
            "trim": self.publisher.trim,
        }
        for step, run in steps.items():
            try:
                await run()
            except DependencyUnavailableError:
                raise
            except Exception as exc:
                self._upkeep_failed(step, exc)

    def _upkeep_failed(self, step: str, error: Exception) -> None:
        # It fails every second until an operator acts: say so once a minute.
        now = time.monotonic()
        self._upkeep_failures += 1
        if now - self._upkeep_failure_logged_at < UPKEEP_FAILURE_LOG_SECONDS:
            return
        logger.warning(
            "event_upkeep_failed",
            extra={
                "event": "event_upkeep_failed",
                "step": step,
                "error": type(error).__name__,
                "detail": str(error)[:500],
                "failures": self._upkeep_failures,  # since the last report
            },
        )
        self._upkeep_failure_logged_at = now
        self._upkeep_failures = 0

    async def _pass(self, upkeep_due: bool) -> int:
        sent = await self.publish_pending()
        if upkeep_due:
            # Redis down: publish_pending has logged it already.
            with contextlib.suppress(DependencyUnavailableError):
                await self.upkeep()
        return sent

    async def run(self, stop: asyncio.Event, poll_seconds: float) -> None:
        """Publish until `stop` is set; never dies on a transient error."""
        next_upkeep = 0.0
        while not stop.is_set():
            upkeep_due = time.monotonic() >= next_upkeep
            if upkeep_due:
                next_upkeep = time.monotonic() + UPKEEP_SECONDS
            try:
                sent = await self._pass(upkeep_due)
            except Exception:  # database hiccup: log, wait, try again
                logger.exception("outbox relay pass failed")
                sent = 0
            if sent < self.batch_size:
                pause = poll_seconds if sent == 0 else min(GATHER_SECONDS, poll_seconds)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
