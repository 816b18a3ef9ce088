"""Failed-login counters behind an interface: in-process, or Redis (see backends)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from redis.asyncio import Redis

logger = logging.getLogger("app.security")


ATTEMPT_LEASE_SECONDS = 60
"""How long an admitted attempt holds its slot if it never ends (its process died).

Longer than any password check, queued behind a burst of others, takes.
"""


class Outcome(StrEnum):
    """How an admitted attempt ended."""

    FAILED = "failed"  # wrong password: a failure, and maybe a lock
    SUCCEEDED = "succeeded"  # right password: failures and lock are cleared
    RELEASED = "released"  # neither (e.g. right password, disabled account)


@dataclass(slots=True)
class AttemptState:
    """Failures counted in the current window, any lock, attempts under way."""

    failures: int = 0
    window_started: float = 0.0
    locked_until: float = 0.0
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """When an account locks, and for how long (from the `LOGIN_*` settings)."""

    window: float
    max_failures: int
    base_seconds: float
    max_seconds: float

    def slots(self, failures: int) -> int:
        """How many attempts may check a password at once after `failures`.

        As many as failures are still allowed, so concurrent wrong guesses
        never get more tries than guesses sent one by one; one at a time once
        a lock has run out (each failure then locks again).
        """
        return max(self.max_failures - failures, 1)

    def lock_seconds(self, failures: int) -> float:
        """How long `failures` failures in the window lock the account (0: not).

        Keycloak-style: from the threshold on, each failure doubles the wait.
        """
        if failures < self.max_failures:
            return 0.0
        extra = min(failures - self.max_failures, 20)
        return min(self.base_seconds * (1 << extra), self.max_seconds)


class Verdict(StrEnum):
    """What `begin_attempt` decided."""

    ADMITTED = "admitted"
    LOCKED = "locked"  # too many failures: wait for `locked_until`
    BUSY = "busy"  # every slot is taken by attempts under way: retry soon


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of `begin_attempt`."""

    verdict: Verdict
    failures: int
    locked_until: float


class LoginAttemptStore(Protocol):
    """Where failure counters live; shared by all processes when it is Redis."""

    async def get(self, key: str, now: float) -> AttemptState:
        """The state of `key` (a fresh state when unknown or expired)."""
        ...

    async def add_failure(self, key: str, now: float, window: float) -> int:
        """Count one failure; return the failures in the current window."""
        ...

    async def begin_attempt(
        self, key: str, attempt_id: str, now: float, policy: LockoutPolicy
    ) -> Admission:
        """Atomically: refuse while `key` is locked or its slots are taken.

        Else take a slot (`LockoutPolicy.slots`) until `end_attempt`: so
        concurrent attempts cannot all pass a check made before any of them
        failed, and an attempt under way is not a failure.
        """
        ...

    async def end_attempt(
        self,
        key: str,
        attempt_id: str,
        now: float,
        policy: LockoutPolicy,
        outcome: Outcome,
    ) -> int:
        """Free the attempt's slot and record its outcome; return the failures."""
        ...

    async def lock(self, key: str, until: float) -> None:
        """Refuse `key` until the given time."""
        ...

    async def reset(self, key: str) -> None:
        """Forget `key` (after a successful login)."""
        ...


class InMemoryLoginAttemptStore:
    """Per-process counters with a fixed window per key; bounded in size."""

    def __init__(self, max_keys: int = 100_000) -> None:
        """Create an empty store holding at most about `max_keys` keys."""
        self._states: dict[str, AttemptState] = {}
        self._max_keys = max_keys
        self._lock = asyncio.Lock()

    async def get(self, key: str, now: float) -> AttemptState:
        """The state of `key`; unknown keys have no failures and no lock."""
        state = self._states.get(key)
        if state is None:
            return AttemptState()
        return AttemptState(state.failures, state.window_started, state.locked_until)

    async def add_failure(self, key: str, now: float, window: float) -> int:
        """Count one failure in a window that starts at the first failure."""
        async with self._lock:
            return self._count(key, now, window).failures

    async def begin_attempt(
        self, key: str, attempt_id: str, now: float, policy: LockoutPolicy
    ) -> Admission:
        """Refuse while locked or busy, else take one of the free slots.

        In one process an attempt always ends (`end_attempt` runs in a
        `finally`), so a count of attempts under way needs no lease.
        """
        async with self._lock:
            state = self._state(key, now, policy.window)
            if state.locked_until > now:
                return Admission(Verdict.LOCKED, state.failures, state.locked_until)
            if state.in_flight >= policy.slots(state.failures):
                return Admission(Verdict.BUSY, state.failures, 0.0)
            state.in_flight += 1
            return Admission(Verdict.ADMITTED, state.failures, 0.0)

    async def end_attempt(
        self,
        key: str,
        attempt_id: str,
        now: float,
        policy: LockoutPolicy,
        outcome: Outcome,
    ) -> int:
        """Free the slot; count a failure (and lock) or clear them on success."""
        async with self._lock:
            state = self._state(key, now, policy.window)
            state.in_flight = max(state.in_flight - 1, 0)
            if outcome is Outcome.SUCCEEDED:
                state.failures, state.locked_until = 0, 0.0
                if not state.in_flight:
                    del self._states[key]
            elif outcome is Outcome.FAILED:
                state.failures += 1
                wait = policy.lock_seconds(state.failures)
                if wait:
                    state.locked_until = max(state.locked_until, now + wait)
            return state.failures

    def _state(self, key: str, now: float, window: float) -> AttemptState:
        # Callers hold the lock. The window starts at its first failure.
        state = self._states.get(key)
        if state is None:
            self._prune(now, window)
            state = self._states[key] = AttemptState(window_started=now)
        elif now - state.window_started > window:
            state.failures = 0
            state.window_started = now
        return state

    def _count(self, key: str, now: float, window: float) -> AttemptState:
        state = self._state(key, now, window)
        state.failures += 1
        return state

    async def lock(self, key: str, until: float) -> None:
        """Lock `key` until `until`."""
        async with self._lock:
            state = self._states.setdefault(key, AttemptState(window_started=until))
            state.locked_until = max(state.locked_until, until)

    async def reset(self, key: str) -> None:
        """Forget `key`."""
        async with self._lock:
            self._states.pop(key, None)

    def _prune(self, now: float, window: float) -> None:
        if len(self._states) < self._max_keys:
            return
        stale = [
            key
            for key, state in self._states.items()
            if now - state.window_started > window
            and state.locked_until <= now
            and not state.in_flight
        ]
        for key in stale:
            del self._states[key]


_ADD_FAILURE = """
local started = tonumber(redis.call('HGET', KEYS[1], 'window_started') or '0')
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
if started == 0 or now - started > window then
    redis.call('HSET', KEYS[1], 'failures', 0, 'window_started', ARGV[1])
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return failures
"""
_LOCK = """
local current = tonumber(redis.call('HGET', KEYS[1], 'locked_until') or '0')
if tonumber(ARGV[1]) > current then
    redis.call('HSET', KEYS[1], 'locked_until', ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Attempts under way are members of a sorted set (KEYS[2]) scored by when
# their lease ends: an attempt whose process died frees its slot by itself.
# KEYS: the state hash, the attempts set. ARGV: now, window, max failures,
# attempt id, lease seconds.
_BEGIN_ATTEMPT = """
local now = tonumber(ARGV[1])
local failures = 0
local started = tonumber(redis.call('HGET', KEYS[1], 'window_started') or '0')
if started ~= 0 and now - started <= tonumber(ARGV[2]) then
    failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
end
local locked = tonumber(redis.call('HGET', KEYS[1], 'locked_until') or '0')
if locked > now then
    return {'locked', failures, tostring(locked)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local slots = math.max(tonumber(ARGV[3]) - failures, 1)
if redis.call('ZCARD', KEYS[2]) >= slots then
    return {'busy', failures, '0'}
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[5]), ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return {'admitted', failures, '0'}
"""

# KEYS: the state hash, the attempts set. ARGV: now, window, max failures,
# base seconds, max seconds, retention, attempt id, outcome.
_END_ATTEMPT = """
redis.call('ZREM', KEYS[2], ARGV[7])
if ARGV[8] == 'succeeded' then
    redis.call('DEL', KEYS[1])
    return 0
end
local now = tonumber(ARGV[1])
local started = tonumber(redis.call('HGET', KEYS[1], 'window_started') or '0')
local fresh = started == 0 or now - started > tonumber(ARGV[2])
if ARGV[8] ~= 'failed' then
    if fresh then
        return 0
    end
    return tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
end
if fresh then
    redis.call('HSET', KEYS[1], 'failures', 0, 'window_started', ARGV[1])
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local threshold = tonumber(ARGV[3])
if failures >= threshold then
    local extra = math.min(failures - threshold, 20)
    local until_ = now + math.min(tonumber(ARGV[4]) * 2 ^ extra, tonumber(ARGV[5]))
    local current = tonumber(redis.call('HGET', KEYS[1], 'locked_until') or '0')
    if until_ > current then
        redis.call('HSET', KEYS[1], 'locked_until', tostring(until_))
    end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return failures
"""


class RedisLoginAttemptStore:
    """Counters in Redis hashes, so every API process sees every failure."""

    def __init__(
        self, redis: Redis, prefix: str, retention_seconds: int = 3600
    ) -> None:
        """Keys are `<prefix>login:<key>`; they expire after `retention_seconds`."""
        self.redis = redis
        self.prefix = f"{prefix}login:"
        self.retention = retention_seconds

    async def get(self, key: str, now: float) -> AttemptState:
        """The state of `key`."""
        values: dict[Any, Any] = await self.redis.hgetall(self.prefix + key)
        return AttemptState(
            failures=int(values.get("failures", 0)),
            window_started=float(values.get("window_started", 0)),
            locked_until=float(values.get("locked_until", 0)),
        )

    async def add_failure(self, key: str, now: float, window: float) -> int:
        """Count one failure atomically (a Lua script)."""
        result = await self.redis.eval(
            _ADD_FAILURE, 1, self.prefix + key, repr(now), repr(window), self.retention
        )
        return int(result)

    async def lock(self, key: str, until: float) -> None:
        """Lock `key` until `until` (never shortening a longer lock)."""
        await self.redis.eval(_LOCK, 1, self.prefix + key, repr(until), self.retention)

    def _keys(self, key: str) -> tuple[str, str]:
        return self.prefix + key, f"{self.prefix}{key}:attempts"

    async def begin_attempt(
        self, key: str, attempt_id: str, now: float, policy: LockoutPolicy
    ) -> Admission:
        """Check and take a leased slot in one atomic step (a Lua script)."""
        verdict, failures, locked_until = await self.redis.eval(
            _BEGIN_ATTEMPT,
            2,
            *self._keys(key),
            repr(now),
            repr(policy.window),
            policy.max_failures,
            attempt_id,
            ATTEMPT_LEASE_SECONDS,
        )
        return Admission(Verdict(verdict), int(failures), float(locked_until))

    async def end_attempt(
        self,
        key: str,
        attempt_id: str,
        now: float,
        policy: LockoutPolicy,
        outcome: Outcome,
    ) -> int:
        """Free the slot and record the outcome in one atomic step (a Lua script)."""
        failures = await self.redis.eval(
            _END_ATTEMPT,
            2,
            *self._keys(key),
            repr(now),
            repr(policy.window),
            policy.max_failures,
            repr(policy.base_seconds),
            repr(policy.max_seconds),
            self.retention,
            attempt_id,
            outcome.value,
        )
        return int(failures)

    async def reset(self, key: str) -> None:
        """Forget `key`."""
        await self.redis.delete(self.prefix + key)


def _warn_fallback(exc: Exception) -> None:
    logger.warning(
        "login attempt store unavailable; counting in this process",
        extra={"event": "attempt_store_fallback", "error": type(exc).__name__},
    )


class FallbackLoginAttemptStore:
    """Redis first; when Redis fails, a per-process store, never "no limit at all".

    Brute-force protection guards security, so it must not fail open.
    """

    def __init__(self, primary: LoginAttemptStore, fallback: LoginAttemptStore) -> None:
        """Prefer `primary`; use `fallback` while `primary` raises."""
        self.primary = primary
        self.fallback = fallback
        # Attempts admitted by `fallback`: they end there (their slot is there).
        self._local_attempts: set[str] = set()

    async def _call(self, method: str, *args: object) -> Any:
        try:
            return await getattr(self.primary, method)(*args)
        except Exception as exc:
            _warn_fallback(exc)
            return await getattr(self.fallback, method)(*args)

    async def get(self, key: str, now: float) -> AttemptState:
        """The state from Redis, or from this process when Redis is down."""
        primary: AttemptState = await self._call("get", key, now)
        local = await self.fallback.get(key, now)
        # A lock or failures counted locally during an outage still apply.
        return AttemptState(
            failures=max(primary.failures, local.failures),
            window_started=primary.window_started or local.window_started,
            locked_until=max(primary.locked_until, local.locked_until),
        )

    async def add_failure(self, key: str, now: float, window: float) -> int:
        """Count in Redis (or locally when Redis is down)."""
        count: int = await self._call("add_failure", key, now, window)
        return count

    async def lock(self, key: str, until: float) -> None:
        """Lock in Redis (or locally)."""
        await self._call("lock", key, until)

    async def begin_attempt(
        self, key: str, attempt_id: str, now: float, policy: LockoutPolicy
    ) -> Admission:
        """Admit through Redis (or locally); a lock set locally still holds."""
        local = await self.fallback.get(key, now)
        if local.locked_until > now:
            return Admission(Verdict.LOCKED, local.failures, local.locked_until)
        try:
            return await self.primary.begin_attempt(key, attempt_id, now, policy)
        except Exception as exc:
            _warn_fallback(exc)
        self._local_attempts.add(attempt_id)
        return await self.fallback.begin_attempt(key, attempt_id, now, policy)

    async def end_attempt(
        self,
        key: str,
        attempt_id: str,
        now: float,
        policy: LockoutPolicy,
        outcome: Outcome,
    ) -> int:
        """End where the attempt began (Redis, or this process while Redis failed)."""
        if attempt_id in self._local_attempts:
            self._local_attempts.discard(attempt_id)
            return await self.fallback.end_attempt(
                key, attempt_id, now, policy, outcome
            )
        failures: int = await self._call(
            "end_attempt", key, attempt_id, now, policy, outcome
        )
        return failures

    async def reset(self, key: str) -> None:
        """Forget everywhere."""
        await self._call("reset", key)
        await self.fallback.reset(key)
