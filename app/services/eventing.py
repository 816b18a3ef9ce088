"""Assemble event delivery for a process: dispatcher, publisher, relay, consumer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.email import EmailTransport
from app.core.events import EventPublisher, InProcessPublisher, RedisStreamPublisher
from app.services.handlers import EventDispatcher, MailSettings, build_dispatcher
from app.services.relay import OutboxRelay
from app.services.retention import Pruner
from app.services.worker import ConsumerSettings, StreamConsumer

logger = logging.getLogger("app.events")


@dataclass
class EventRuntime:
    """Everything that moves events in one process, and its background tasks.

    Housekeeping (`start_pruner`) runs here too: it shares the tasks' lifetime.
    """

    dispatcher: EventDispatcher
    relay: OutboxRelay
    settings: Settings
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start_relay(self) -> None:
        """Publish the outbox in the background until `shutdown`."""
        self.tasks.append(
            asyncio.create_task(
                self.relay.run(self.stop, self.settings.OUTBOX_POLL_SECONDS),
                name="outbox-relay",
            )
        )

    def start_consumer(self, consumer: StreamConsumer) -> None:
        """Consume the event stream in the background until `shutdown`."""
        self.tasks.append(asyncio.create_task(consumer.run(self.stop), name="consumer"))

    def start_pruner(self, pruner: Pruner) -> None:
        """Delete ended rows now and periodically until `shutdown`."""
        self.tasks.append(asyncio.create_task(pruner.run(self.stop), name="pruner"))

    async def shutdown(self) -> None:
        """Stop the background tasks, letting the current pass finish."""
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(task, 10)
                except TimeoutError:
                    task.cancel()
        self.tasks.clear()


def build_event_runtime(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    transport: EmailTransport,
    redis: Redis | None,
) -> EventRuntime:
    """Events go to the Redis Stream when Redis is configured, else to handlers here.

    Args:
        settings: Application settings.
        sessionmaker: Database sessions.
        transport: Mail transport of the handlers.
        redis: Redis client, or None on the embedded default.

    Returns:
        The runtime; call `start_relay` (and `start_consumer` in a worker).
    """
    dispatcher = build_dispatcher(
        sessionmaker,
        transport,
        MailSettings(settings.FRONTEND_URL, settings.EMAIL_TOKEN_EXPIRE_MINUTES),
    )
    publisher: EventPublisher
    if redis is not None:
        publisher = RedisStreamPublisher(
            redis, stream_key(settings), max_length=settings.EVENT_STREAM_MAX_LENGTH
        )
    else:
        publisher = InProcessPublisher(dispatcher.dispatch)
    relay = OutboxRelay(
        sessionmaker,
        publisher,
        batch_size=settings.OUTBOX_BATCH_SIZE,
        max_attempts=settings.EVENT_MAX_DELIVERIES,
        retry_base_seconds=settings.EVENT_RETRY_BASE_SECONDS,
        handled=dispatcher.handles,
        redeliver_after=timedelta(seconds=settings.EVENT_REDELIVER_CHECK_SECONDS),
    )
    return EventRuntime(dispatcher=dispatcher, relay=relay, settings=settings)


def stream_key(settings: Settings) -> str:
    """The event stream's Redis key."""
    return f"{settings.REDIS_KEY_PREFIX}{settings.EVENT_STREAM}"


def consumer_settings(settings: Settings, consumer: str) -> ConsumerSettings:
    """Stream names and limits for a consumer named `consumer`."""
    return ConsumerSettings(
        stream=stream_key(settings),
        dead_letter_stream=f"{settings.REDIS_KEY_PREFIX}{settings.EVENT_DEAD_LETTER_STREAM}",
        group=settings.EVENT_CONSUMER_GROUP,
        consumer=consumer,
        max_deliveries=settings.EVENT_MAX_DELIVERIES,
        retry_base_seconds=settings.EVENT_RETRY_BASE_SECONDS,
        handler_timeout_seconds=settings.EVENT_HANDLER_TIMEOUT_SECONDS,
    )
