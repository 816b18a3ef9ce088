"""`python -m app worker`: consume the event stream with a consumer group.

Each entry is acknowledged only after its handlers succeed and its outbox row
is marked done (which stops the relay from publishing it again). A failed entry
stays pending and is re-claimed after a growing wait; one that keeps failing
goes to the dead-letter stream with its error. Delivery is at least once;
handlers ignore the duplicates by event id (see `Handler`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import metrics
from app.core.events import Event
from app.core.exceptions import DependencyUnavailableError
from app.models.base import utcnow
from app.repositories import outbox
from app.services.handlers import EventDispatcher

logger = logging.getLogger("app.worker")
MAX_BACKOFF_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    """Names and limits of one consumer."""

    stream: str
    dead_letter_stream: str
    group: str
    consumer: str
    max_deliveries: int = 5
    retry_base_seconds: float = 1.0
    handler_timeout_seconds: float = 30.0
    pending_scan: int = 10
    block_ms: int = 1000


class StreamConsumer:
    """Reads the event stream as one member of a consumer group."""

    def __init__(
        self,
        redis: Redis,
        dispatcher: EventDispatcher,
        settings: ConsumerSettings,
        sessionmaker: async_sessionmaker[AsyncSession],
    ) -> None:
        """Consume with `redis`, handing events to `dispatcher`.

        Args:
            redis: The stream's Redis.
            dispatcher: The handlers.
            settings: Names and limits.
            sessionmaker: The database of the outbox, where events are marked done.
        """
        self.redis = redis
        self.dispatcher = dispatcher
        self.settings = settings
        self.sessionmaker = sessionmaker

    async def ensure_group(self) -> None:
        """Create the group (from the stream's start) unless it exists."""
        try:
            await self.redis.xgroup_create(
                self.settings.stream, self.settings.group, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _retry_after_ms(self, deliveries: int) -> int:
        # Capped: an entry waiting out a long outage is tried every few minutes.
        exponent = min(max(deliveries - 1, 0), 30)
        backoff = min(
            self.settings.retry_base_seconds * 2**exponent, MAX_BACKOFF_SECONDS
        )
        # Never steal an entry a live consumer may still be working on.
        return int(max(backoff, self.settings.handler_timeout_seconds) * 1000)

    async def _due_for_retry(self) -> list[tuple[str, dict[str, str], int]]:
        s = self.settings
        pending: list[dict[str, Any]] = await self.redis.xpending_range(
            s.stream, s.group, min="-", max="+", count=s.pending_scan
        )
        for entry in pending:
            deliveries = int(entry["times_delivered"])
            wait = self._retry_after_ms(deliveries)
            if int(entry["time_since_delivered"]) < wait:
                continue
            messages: Any = await self.redis.xclaim(
                s.stream,
                s.group,
                s.consumer,
                min_idle_time=wait,
                message_ids=[entry["message_id"]],
            )
            if messages:  # one at a time, as new entries (see process_once)
                return [(mid, fields or {}, deliveries + 1) for mid, fields in messages]
        return []

    async def _read_new(self) -> list[tuple[str, dict[str, str], int]]:
        s = self.settings
        response: Any = await self.redis.xreadgroup(
            s.group, s.consumer, {s.stream: ">"}, count=1, block=s.block_ms
        )
        return [
            (message_id, fields, 1)
            for _, messages in response or []
            for message_id, fields in messages
        ]

    async def process_once(self) -> int:
        """Handle one entry: a due retry, else a new one. Returns how many (0 or 1).

        One at a time: an entry taken and left waiting behind others would go
        idle past `handler_timeout_seconds`, and another consumer would take it
        over as abandoned and handle it too.
        """
        batch = await self._due_for_retry() or await self._read_new()
        for message_id, fields, deliveries in batch:
            await self._handle(message_id, fields, deliveries)
        return len(batch)

    async def _handle(
        self, message_id: str, fields: dict[str, str], deliveries: int
    ) -> None:
        s = self.settings
        try:
            event = Event.from_fields(fields)
        except (KeyError, ValueError) as exc:
            await self._dead_letter(message_id, fields, exc, deliveries)
            return
        try:
            async with asyncio.timeout(s.handler_timeout_seconds):
                await self.dispatcher.dispatch(event)
        except Exception as exc:
            # An outage (the mail server down) is waited out, never dead-lettered.
            transient = isinstance(exc, DependencyUnavailableError)
            if deliveries >= s.max_deliveries and not transient:
                await self._dead_letter(message_id, fields, exc, deliveries)
            return  # stays pending: re-claimed after the backoff
        if self.dispatcher.handles(event.event_type):  # else done when published
            await self._mark_done(event.event_id)
        await self.redis.xack(s.stream, s.group, message_id)

    async def _mark_done(self, event_id: str, error: str | None = None) -> None:
        # Before the XACK: if this fails the entry stays pending and comes back.
        async with self.sessionmaker() as session:
            await outbox.mark_done(session, event_id, utcnow(), error)
            await session.commit()

    async def _dead_letter(
        self, message_id: str, fields: dict[str, str], error: Exception, deliveries: int
    ) -> None:
        s = self.settings
        entry = {
            **fields,
            "original_id": message_id,
            "error": f"{type(error).__name__}: {error}"[:2000],
            "deliveries": str(deliveries),
            "dead_lettered_at": utcnow().isoformat(),
        }
        await self.redis.xadd(s.dead_letter_stream, entry)  # type: ignore[arg-type]
        if "event_id" in fields:  # given up: the relay must not publish it again
            await self._mark_done(
                fields["event_id"], f"dead-lettered: {entry['error']}"
            )
        await self.redis.xack(s.stream, s.group, message_id)
        metrics.EVENTS_DEAD_LETTERED.labels(fields.get("event_type", "unknown")).inc()
        logger.error(
            "event dead-lettered",
            extra={
                "event": "event_dead_lettered",
                "message_id": message_id,
                "event_type": fields.get("event_type"),
                "deliveries": deliveries,
            },
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; Redis outages are waited out."""
        while not stop.is_set():
            try:
                await self.ensure_group()
                await self.process_once()
            except Exception:  # Redis down or a bug: log and keep serving
                logger.exception("consumer pass failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
