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

A revocation must hold from the moment it is answered, whatever Redis does:
stalls, restarts with or without its data, fails over, or cannot be reached.
So the guarantee never rests on a deletion reaching Redis:

- An entry lives at most `ttl` from the moment its fill *began* (an absolute
  expiry, `PXAT`), so a fill that read the database before a change and
  reached Redis late (queued behind a stall) still dies on time.
- A deletion that Redis did not confirm (or that a replica did not
  acknowledge) is retried until it is confirmed or until every entry that
  could predate the change has expired: `ttl` plus a margin for clock skew
  between hosts. Only then does the revoking request answer. In the worst case
  (Redis unreachable) a logout takes `AUTH_CACHE_TTL_SECONDS` + 1 s.
- The deletion counter starts at a random value whenever Redis lost it, so a
  fill that saw a counter before a restart can never match one after it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
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
CLOCK_SKEW_MARGIN_SECONDS = 1.0
"""How far the clocks of the API hosts may disagree (entry expiries are absolute)."""
RETRY_INTERVAL_SECONDS = 0.2
"""Pause between attempts to apply a revocation Redis did not confirm."""
REPLICA_ACK_TIMEOUT_MS = 1000
"""How long a revocation waits for Redis replicas to acknowledge it."""


@dataclass(frozen=True, slots=True)
class CacheRead:
    """What a lookup found, the cache's generation and the time it looked.

    `read_at` (wall clock, seconds) bounds a fill made from this lookup: the
    entry expires `ttl` after it, however late the fill reaches the cache.
    """

    entry: UserEntry | None
    generation: int
    read_at: float = 0.0


class AuthCache(Protocol):
    """Where cached users and live-session markers are kept."""

    async def get(self, user_id: int, session_id: str | None) -> CacheRead:
        """The cached user if present and its session (when given) is live.

        Pass the read's `generation` to `put` when filling a miss.
        """
        ...

    async def put(
        self, user: UserEntry, session_id: str | None, seen: CacheRead
    ) -> None:
        """Cache a user (and mark a session live), read after lookup `seen`.

        Nothing is stored when anything was forgotten since: the user may
        have been read from before that change.
        """
        ...

    async def forget(self, user_id: int | None, session_ids: Iterable[str]) -> None:
        """Drop a user's entry and sessions' markers (after a change); a new generation.

        Returns only once no process can be answered from an entry or marker
        older than the change (see the module docstring).
        """
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
        self, user: UserEntry, session_id: str | None, seen: CacheRead
    ) -> None:
        """Cache `user`, and its session as live, unless forgotten meanwhile."""
        # One process: a deletion always lands, so the generation is enough.
        if self.ttl <= 0 or seen.generation != self._generation:
            return
        self._write(f"user:{user['id']}", user)
        if session_id is not None:
            self._write(f"sess:{session_id}", True)

    async def forget(self, user_id: int | None, session_ids: Iterable[str]) -> None:
        """Drop the user and the sessions."""
        self._generation += 1
        keys = [f"sess:{session_id}" for session_id in session_ids]
        if user_id is not None:
            keys.append(f"user:{user_id}")
        for key in keys:
            self._entries.pop(key, None)


# KEYS: generation, user entry, [session marker]
# ARGV: generation seen, user JSON, absolute expiry (ms), a fresh random generation
_PUT = """
local current = redis.call('GET', KEYS[1])
if not current then
    -- Redis lost the counter (restart, eviction): start it where no lookup
    -- made before the loss can match, and keep nothing this time.
    redis.call('SET', KEYS[1], ARGV[4], 'NX')
    return 0
end
if current ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PXAT', ARGV[3])
if KEYS[3] then
    redis.call('SET', KEYS[3], '1', 'PXAT', ARGV[3])
end
return 1
"""

# KEYS: generation, the entries to delete; ARGV: a fresh random generation
_FORGET = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('INCR', KEYS[1])
for i = 2, #KEYS do
    redis.call('DEL', KEYS[i])
end
return 1
"""


def _fresh_generation() -> int:
    """A counter start no earlier lookup saw (2**40 and up; Lua's doubles are exact)."""
    return (1 << 40) + secrets.randbelow(1 << 50)


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
        # Revocations go through a plain client on the same connections: a
        # fail-fast client would skip exactly the attempts that must be made.
        self._direct = Redis(connection_pool=redis.connection_pool)
        self._forget = self._direct.register_script(_FORGET)

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
        read_at = time.time()
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
            return CacheRead(None, seen, read_at)
        user: UserEntry = orjson.loads(user_json)
        return CacheRead(user, seen, read_at)

    async def put(
        self, user: UserEntry, session_id: str | None, seen: CacheRead
    ) -> None:
        """Cache the user (and session) unless forgotten since; errors are logged."""
        if not self.enabled or seen.generation == UNKNOWN_GENERATION:
            return
        expires_at_ms = int((seen.read_at + self.ttl) * 1000)
        try:
            await self._put_if_current(
                keys=self._keys(user["id"], session_id),
                args=[
                    seen.generation,
                    orjson.dumps(user),
                    expires_at_ms,
                    _fresh_generation(),
                ],
            )
        except Exception as exc:
            logger.warning(
                "auth cache unavailable", extra={"error": type(exc).__name__}
            )

    async def forget(self, user_id: int | None, session_ids: Iterable[str]) -> None:
        """Delete the user's entry and the sessions' markers, confirmed or waited out."""
        keys = [f"{self.prefix}sess:{sid}" for sid in session_ids]
        if user_id is not None:
            keys.append(f"{self.prefix}user:{user_id}")
        await self._invalidate(keys)

    async def _invalidate(self, keys: list[str]) -> None:
        """Delete `keys` until Redis confirms it, or until they cannot matter.

        Called after the change committed, so every entry written from a read
        made before it expires by `deadline`; after that the database decides
        for every process even if the deletion never lands.
        """
        if not keys or not self.enabled:
            return
        deadline = time.time() + self.ttl + CLOCK_SKEW_MARGIN_SECONDS
        attempts = 0
        while True:
            attempts += 1
            remaining = deadline - time.time()
            try:
                async with asyncio.timeout(max(remaining, RETRY_INTERVAL_SECONDS)):
                    if await self._apply(keys):
                        return
            except Exception as exc:  # any failure means "not confirmed"
                self._log_unconfirmed(exc, attempts)
            remaining = deadline - time.time()
            if remaining <= 0:
                logger.warning(
                    "auth cache invalidation waited out",
                    extra={
                        "event": "cache_invalidation_waited_out",
                        "attempts": attempts,
                    },
                )
                return
            await asyncio.sleep(min(RETRY_INTERVAL_SECONDS, remaining))

    async def _apply(self, keys: list[str]) -> bool:
        """One attempt: delete and, with replicas, wait for them to acknowledge.

        Without the replicas' acknowledgement a failover could promote one that
        still holds the entries.
        """
        await self._forget(
            keys=[self.generation_key, *keys], args=[_fresh_generation()]
        )
        role = await self._direct.role()
        replicas = len(role[2]) if role and role[0] in ("master", b"master") else 0
        if replicas == 0:
            return True
        acknowledged = await self._direct.wait(replicas, REPLICA_ACK_TIMEOUT_MS)
        return int(acknowledged) >= replicas

    @staticmethod
    def _log_unconfirmed(exc: BaseException, attempts: int) -> None:
        if attempts == 1:
            logger.error(
                "auth cache invalidation failed; retrying until confirmed or expired",
                extra={
                    "event": "cache_invalidation_failed",
                    "error": type(exc).__name__,
                },
            )
