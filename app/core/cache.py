"""Cache of the per-request access check: who the user is, which sessions live.

Every authenticated request needs the user's status, role, names and token
version, and whether the token's session is revoked. This cache answers that
without a database round trip; every change to those facts deletes the entry
(after its commit), so a deactivation, logout or role change is honoured at
once. With Redis the entries are shared, so every process sees a deletion at
the same moment; without Redis the service is one process and the in-process
cache is the only one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

logger = logging.getLogger("app.cache")

UserEntry = dict[str, Any]


class AuthCache(Protocol):
    """Where cached users and live-session markers are kept."""

    async def get(self, user_id: int, session_id: str | None) -> UserEntry | None:
        """The cached user if present, and its session (when given) is live."""
        ...

    async def put(self, user: UserEntry, session_id: str | None) -> None:
        """Cache a user (and mark a session live)."""
        ...

    async def forget_user(self, user_id: int) -> None:
        """Drop a user's entry (after any change to it)."""
        ...

    async def forget_sessions(self, session_ids: Iterable[str]) -> None:
        """Drop live-session markers (after revocations)."""
        ...


class MemoryAuthCache:
    """A per-process dictionary with a time to live."""

    def __init__(self, ttl_seconds: float, max_entries: int = 100_000) -> None:
        """Entries live `ttl_seconds`; the cache is cleared when it grows too big."""
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Any]] = {}

    def _read(self, key: str) -> Any:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires < time.monotonic():
            self._entries.pop(key, None)
            return None
        return value

    def _write(self, key: str, value: Any) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # crude but bounded; the database refills it
        self._entries[key] = (time.monotonic() + self.ttl, value)

    async def get(self, user_id: int, session_id: str | None) -> UserEntry | None:
        """The cached user when it (and its session) are cached."""
        user: UserEntry | None = self._read(f"user:{user_id}")
        if user is None or (
            session_id is not None and not self._read(f"sess:{session_id}")
        ):
            return None
        return user

    async def put(self, user: UserEntry, session_id: str | None) -> None:
        """Cache `user`, and its session as live."""
        if self.ttl <= 0:
            return
        self._write(f"user:{user['id']}", user)
        if session_id is not None:
            self._write(f"sess:{session_id}", True)

    async def forget_user(self, user_id: int) -> None:
        """Drop the user."""
        self._entries.pop(f"user:{user_id}", None)

    async def forget_sessions(self, session_ids: Iterable[str]) -> None:
        """Drop the sessions."""
        for session_id in session_ids:
            self._entries.pop(f"sess:{session_id}", None)


class RedisAuthCache:
    """Entries in Redis, shared by every process; on a Redis error, a miss."""

    def __init__(self, redis: Redis, prefix: str, ttl_seconds: float) -> None:
        """Keys are `<prefix>auth:...` and expire after `ttl_seconds`."""
        self.redis = redis
        self.prefix = f"{prefix}auth:"
        self.ttl = max(1, int(ttl_seconds))
        self.enabled = ttl_seconds > 0

    async def get(self, user_id: int, session_id: str | None) -> UserEntry | None:
        """One MGET; any Redis trouble reads as a miss (the database decides)."""
        if not self.enabled:
            return None
        keys = [f"{self.prefix}user:{user_id}"]
        if session_id is not None:
            keys.append(f"{self.prefix}sess:{session_id}")
        try:
            values = await self.redis.mget(keys)
        except Exception as exc:
            logger.warning(
                "auth cache unavailable", extra={"error": type(exc).__name__}
            )
            return None
        if any(value is None for value in values):
            return None
        user: UserEntry = orjson.loads(str(values[0]))
        return user

    async def put(self, user: UserEntry, session_id: str | None) -> None:
        """Cache the user (and session); failures are only logged."""
        if not self.enabled:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(
                    f"{self.prefix}user:{user['id']}", orjson.dumps(user), ex=self.ttl
                )
                if session_id is not None:
                    pipe.set(f"{self.prefix}sess:{session_id}", "1", ex=self.ttl)
                await pipe.execute()
        except Exception as exc:
            logger.warning(
                "auth cache unavailable", extra={"error": type(exc).__name__}
            )

    async def forget_user(self, user_id: int) -> None:
        """Delete the user's entry."""
        await self._delete([f"{self.prefix}user:{user_id}"])

    async def forget_sessions(self, session_ids: Iterable[str]) -> None:
        """Delete the sessions' markers."""
        await self._delete([f"{self.prefix}sess:{sid}" for sid in session_ids])

    async def _delete(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            await self.redis.delete(*keys)
        except Exception as exc:
            # Entries expire within the TTL; log loudly so operators know.
            logger.error(
                "auth cache invalidation failed",
                extra={
                    "event": "cache_invalidation_failed",
                    "error": type(exc).__name__,
                },
            )
