"""Domain events on the wire, and where they are published to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.exceptions import ResponseError

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

    async def publish(self, event: Event) -> str | None:
        """Publish, or raise (the outbox keeps the event and retries).

        Returns:
            The id of the transport's copy (a stream entry) that a consumer
            still has to handle, or None when the handlers have already run.
        """
        ...


class PublishUnavailableError(DependencyUnavailableError):
    """The transport is down; the event stays in the outbox, uncounted."""


def _stream_id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


class RedisStreamPublisher:
    """Appends events to a Redis Stream read by `python -m app worker`.

    An entry goes once every consumer group has acknowledged it (`trim`), so
    a slow worker loses nothing. Only past `max_length` entries (a group no
    one reads any more holds them all) do the oldest go regardless. What
    Redis loses or cuts (a restart without persistence, a failover,
    eviction, the cap) the relay finds with `held` and publishes again.
    """

    def __init__(self, redis: Redis, stream: str, *, max_length: int) -> None:
        """Publish to `stream`, keeping about `max_length` entries at most."""
        self.redis = redis
        self.stream = stream
        self.max_length = max_length

    async def publish(self, event: Event) -> str:
        """XADD the event; its entry id.

        Raises:
            PublishUnavailableError: Redis cannot be reached.
        """
        async with _unavailable_as_error(any_redis_error=True):
            entry_id = await self.redis.xadd(
                self.stream,
                event.to_fields(),  # type: ignore[arg-type]
                # `~`: whole nodes only, nearly free; may keep a little more.
                maxlen=self.max_length,
                approximate=True,
            )
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    async def held(self, entry_ids: Sequence[str]) -> set[str]:
        """Which of `entry_ids` the stream still holds (one round trip).

        Raises:
            PublishUnavailableError: Redis cannot be reached.
            redis.exceptions.RedisError: Redis refused (e.g. an ACL).
        """
        async with _unavailable_as_error():
            pipe = self.redis.pipeline(transaction=False)
            for entry_id in entry_ids:
                pipe.xrange(self.stream, min=entry_id, max=entry_id, count=1)
            found: list[list[Any]] = await pipe.execute()
        return {
            entry_id
            for entry_id, entries in zip(entry_ids, found, strict=True)
            if entries
        }

    async def trim(self) -> None:
        """Delete the entries every consumer group has acknowledged.

        An entry is done for a group once the group has read past it
        (`last-delivered-id`) and it is no longer pending (the group's lowest
        pending id). With no group yet, the first worker will read the stream
        from its start: nothing goes.

        Raises:
            PublishUnavailableError: Redis cannot be reached.
            redis.exceptions.RedisError: Redis refused (e.g. an ACL without
                XINFO, or no XTRIM MINID before Redis 6.2).
        """
        async with _unavailable_as_error():
            floors = [await self._group_floor(group) for group in await self._groups()]
            if floors:
                # MINID keeps the floor itself; `~` trims whole nodes only,
                # so it may keep more, never less.
                await self.redis.xtrim(
                    self.stream, minid=min(floors, key=_stream_id), approximate=True
                )

    async def _groups(self) -> list[dict[str, Any]]:
        try:
            groups: list[dict[str, Any]] = await self.redis.xinfo_groups(self.stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return []  # nothing published yet, or Redis lost it all
            raise
        return groups

    async def _group_floor(self, group: dict[str, Any]) -> str:
        """The lowest id `group` may still need."""
        floor = str(group["last-delivered-id"])
        if int(group["pending"]):
            pending = await self.redis.xpending(self.stream, group["name"])
            if pending["min"] is not None:  # else acknowledged meanwhile
                floor = min(floor, str(pending["min"]), key=_stream_id)
        return floor


# Redis cannot be reached (down, restarting, loading, timing out).
_UNREACHABLE = (
    ConnectionError,
    OSError,
    TimeoutError,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
)


@asynccontextmanager
async def _unavailable_as_error(
    *, any_redis_error: bool = False
) -> AsyncIterator[None]:
    """Raise PublishUnavailableError when Redis cannot be reached.

    With `any_redis_error`, every Redis error counts as unavailable too: an
    XADD refused (a full Redis's OOM, a replica's READONLY) is never the
    event's fault, so it waits without using up attempts. Elsewhere (the
    upkeep) such errors stay what they are, for the relay to log.
    """
    try:
        yield
    except _UNREACHABLE as exc:
        raise PublishUnavailableError(str(exc)) from exc
    except redis_errors.RedisError as exc:
        if any_redis_error:
            raise PublishUnavailableError(f"{type(exc).__name__}: {exc}") from exc
        raise


class InProcessPublisher:
    """The embedded default: handlers run in this process, straight away."""

    def __init__(self, dispatch: Callable[[Event], Awaitable[None]]) -> None:
        """Deliver through `dispatch` (which raises when a handler fails)."""
        self.dispatch = dispatch

    async def publish(self, event: Event) -> None:
        """Run the event's handlers now (nothing is left to deliver)."""
        await self.dispatch(event)
