"""Domain events on the wire, and where they are published to."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

from app.core.exceptions import DependencyUnavailableError

USER_CREATED = "user.created"
USER_ACTIVATED = "user.activated"
USER_DEACTIVATED = "user.deactivated"
USER_PASSWORD_CHANGED = "user.password_changed"  # noqa: S105 - event name
USER_VERIFICATION_REQUESTED = "user.verification_requested"
USER_PASSWORD_RESET_REQUESTED = "user.password_reset_requested"  # noqa: S105
ITEM_CREATED = "item.created"
ITEM_UPDATED = "item.updated"
ITEM_DELETED = "item.deleted"


@dataclass(frozen=True, slots=True)
class Event:
    """One domain event as publishers and handlers see it."""

    event_id: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    occurred_at: datetime
    payload: dict[str, Any]

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for a Redis Stream entry."""
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": orjson.dumps(self.payload).decode(),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Event:
        """Rebuild an event from a stream entry.

        Raises:
            KeyError, ValueError: The entry is not an event.
        """
        return cls(
            event_id=fields["event_id"],
            event_type=fields["event_type"],
            aggregate_type=fields["aggregate_type"],
            aggregate_id=fields["aggregate_id"],
            occurred_at=datetime.fromisoformat(fields["occurred_at"]),
            payload=orjson.loads(fields["payload"]),
        )


class EventPublisher(Protocol):
    """Hands an event to whatever delivers it to handlers."""

    async def publish(self, event: Event) -> None:
        """Publish, or raise (the outbox keeps the event and retries)."""
        ...


class PublishUnavailableError(DependencyUnavailableError):
    """The transport is down; the event stays in the outbox, uncounted."""


class RedisStreamPublisher:
    """Appends events to a Redis Stream read by `python -m app worker`."""

    def __init__(self, redis: Redis, stream: str, max_length: int = 1_000_000) -> None:
        """Publish to `stream`, trimmed to about `max_length` entries."""
        self.redis = redis
        self.stream = stream
        self.max_length = max_length

    async def publish(self, event: Event) -> None:
        """XADD the event.

        Raises:
            PublishUnavailableError: Redis cannot be reached.
        """
        try:
            await self.redis.xadd(
                self.stream,
                event.to_fields(),  # type: ignore[arg-type]
                maxlen=self.max_length,
                approximate=True,
            )
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise PublishUnavailableError(str(exc)) from exc
        except Exception as exc:
            if type(exc).__module__.startswith("redis"):
                raise PublishUnavailableError(str(exc)) from exc
            raise


class InProcessPublisher:
    """The embedded default: handlers run in this process, straight away."""

    def __init__(self, dispatch: Callable[[Event], Awaitable[None]]) -> None:
        """Deliver through `dispatch` (which raises when a handler fails)."""
        self.dispatch = dispatch

    async def publish(self, event: Event) -> None:
        """Run the event's handlers now."""
        await self.dispatch(event)
