"""Cache of the per-request access check: who the user is, which sessions live.

Every authenticated request needs the user's status, role, names and token
version, and whether the token's session is revoked. This cache answers that
without a database round trip; every change to those facts deletes the entry
(after its commit), so a deactivation, logout or role change is honoured at
once. With Redis the entries are shared, so every process sees a deletion at
the same moment; without Redis the service is one process and the in-process
cache is the only one.

A miss is filled from the database, and a change can commit (and delete its
entry) while that read is under way: the fill would then store the state from
before the change, and a deactivated user or a revoked session would pass for
a whole TTL. So each cache counts its deletions (its generation): a lookup
hands back the count it saw, and a fill is dropped when anything was deleted
since. A deletion elsewhere drops a fill that was fine too; it is refilled on
the next miss, and deletions are rare next to reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis

logger = logging.getLogger("app.cache")

UserEntry = dict[str, Any]
UNKNOWN_GENERATION = -1
"""The generation of a lookup that could not read it: its fill is dropped."""


@dataclass(frozen=True, slots=True)
class CacheRead:
    """What a lookup found, and the cache's generation when it looked."""

    entry: UserEntry | None
    generation: int


class AuthCache(Protocol):
    """Where cached users and live-session markers are kept."""

    async def get(self, user_id: int, session_id: str | None) -> CacheRead:
        """The cached user if present and its session (when given) is live.

        Pass the read's `generation` to `put` when filling a miss.
        """
        ...

    async def put(
        self, user: UserEntry, session_id: str | None, generation: int
    ) -> None:
        """Cache a user (and mark a session live), read after `generation` was.

        Nothing is stored when anything was forgotten since: the user may
        have been read from before that change.
        """
        ...

    async def forget_user(self, user_id: int) -> None:
        """Drop a user's entry (after any change to it); a new generation."""
        ...

    async def forget_sessions(self, session_ids: Iterable[str]) -> None:
        """Drop live-session markers (after revocations); a new generation."""
        ...


class MemoryAuthCache:
    """A per-process dictionary with a time to live."""

    def __init__(self, ttl_seconds: float, max_entries: int = 100_000) -> None:
        """Entries live `ttl_seconds`; the cache is cleared when it grows too big."""
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Any]] = {}
        self._generation = 0

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

    async def get(self, user_id: int, session_id: str | None) -> CacheRead:
        """The cached user when it (and its session) are cached."""
        user: UserEntry | None = self._read(f"user:{user_id}")
        if session_id is not None and not self._read(f"sess:{session_id}"):
            user = None
        return CacheRead(user, self._generation)

    async def put(
        self, user: UserEntry, session_id: str | None, generation: int
    ) -> None:
        """Cache `user`, and its session as live, unless forgotten meanwhile."""
        if self.ttl <= 0 or generation != self._generation:
            return
        self._write(f"user:{user['id']}", user)
        if session_id is not None:
            self._write(f"sess:{session_id}", True)

    async def forget_user(self, user_id: int) -> None:
        """Drop the user."""
        self._generation += 1
        self._entries.pop(f"user:{user_id}", None)

    async def forget_sessions(self, session_ids: Iterable[str]) -> None:
        """Drop the sessions."""
        self._generation += 1
        for session_id in session_ids:
            self._entries.pop(f"sess:{session_id}", None)


_PUT = """
if (redis.call('GET', KEYS[1]) or '0') ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
if KEYS[3] then
    redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
end
return 1
"""


class RedisAuthCache:
    """Entries in Redis, shared by every process; on a Redis error, a miss."""

    def __init__(self, redis: Redis, prefix: str, ttl_seconds: float) -> None:
        """Keys are `<prefix>auth:...` and expire after `ttl_seconds`."""
        self.redis = redis
        self.prefix = f"{prefix}auth:"
        self.generation_key = f"{self.prefix}generation"
        self.ttl = max(1, int(ttl_seconds))
        self.enabled = ttl_seconds > 0
        # Checked and stored in one step: a deletion cannot fall in between.
        self._put_if_current = redis.register_script(_PUT)

    def _keys(self, user_id: int, session_id: str | None) -> list[str]:
        """The generation, the user's entry and (when given) the session's marker."""
        keys = [self.generation_key, f"{self.prefix}user:{user_id}"]
        if session_id is not None:
            keys.append(f"{self.prefix}sess:{session_id}")
        return keys

    async def get(self, user_id: int, session_id: str | None) -> CacheRead:
        """One MGET; any Redis trouble reads as a miss (the database decides)."""
        if not self.enabled:
            return CacheRead(None, UNKNOWN_GENERATION)
        keys = self._keys(user_id, session_id)
        try:
            generation, user_json, *session_live = await self.redis.mget(keys)
        except Exception as exc:
            logger.warning(
                "auth cache unavailable", extra={"error": type(exc).__name__}
            )
            return CacheRead(None, UNKNOWN_GENERATION)
        seen = int(generation or 0)
        if user_json is None or None in session_live:
            return CacheRead(None, seen)
        user: UserEntry = orjson.loads(user_json)
        return CacheRead(user, seen)

    async def put(
        self, user: UserEntry, session_id: str | None, generation: int
    ) -> None:
        """Cache the user (and session) unless forgotten since; errors are logged."""
        if not self.enabled or generation == UNKNOWN_GENERATION:
            return
        try:
            await self._put_if_current(
                keys=self._keys(user["id"], session_id),
                args=[generation, orjson.dumps(user), self.ttl],
            )
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
            # One transaction: a fill checked between the two would store an
            # entry read before the change.
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(self.generation_key)
                pipe.delete(*keys)
                await pipe.execute()
        except Exception as exc:
            # Entries expire within the TTL; log loudly so operators know.
            logger.error(
                "auth cache invalidation failed",
                extra={
                    "event": "cache_invalidation_failed",
                    "error": type(exc).__name__,
                },
            )
