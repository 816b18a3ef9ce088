"""Rate limits with the `limits` library: in memory, or in Redis for every process."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

logger = logging.getLogger("app.ratelimit")


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """The outcome of one hit, with what the `RateLimit-*` headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        """`RateLimit-Limit`, `-Remaining`, `-Reset` (IETF draft), plus `Retry-After`."""
        values = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            values["Retry-After"] = str(max(1, self.reset_seconds))
        return values


def storage_for(redis_url: str | None) -> Storage:
    """Redis storage when configured (shared by all processes), else memory."""
    if redis_url:
        return RedisStorage(
            "async+" + redis_url, implementation="redispy", socket_timeout=1.0
        )
    return MemoryStorage()


STORE_RETRY_SECONDS = 5.0
"""After the store fails, how long requests skip it before trying it again."""


class RateLimiter:
    """Counts hits per key against named limits; fails open if its store is down."""

    def __init__(
        self,
        storage: Storage,
        *,
        enabled: bool,
        prefix: str = "rl",
        fallback: RateLimiter | None = None,
    ) -> None:
        """Use `storage`; when not `enabled`, everything is allowed.

        With a `fallback`, hits the store could not count are counted there
        (a per-process limiter) instead of being allowed.
        """
        self.enabled = enabled
        self.prefix = prefix
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        self.fallback = fallback
        self._skip_until = 0.0

    async def hit(
        self, limit: str | RateLimitItem, *key: str
    ) -> RateLimitDecision | None:
        """Count one hit; None when limiting is off or the store is unavailable.

        The general limiter fails open: an outage of its store must not take the
        API down. (Brute-force protection does not rely on it.)
        """
        if not self.enabled:
            return None
        item = parse(limit) if isinstance(limit, str) else limit
        if time.monotonic() < self._skip_until:
            return await self._fall_back(item, key)
        try:
            allowed = await self.strategy.hit(item, self.prefix, *key)
            stats = await self.strategy.get_window_stats(item, self.prefix, *key)
        except Exception as exc:
            # Open at once for a while: a store that hangs would otherwise make
            # every request wait out its timeout first.
            self._skip_until = time.monotonic() + STORE_RETRY_SECONDS
            logger.warning(
                "rate limiter unavailable; allowing the request",
                extra={"event": "rate_limiter_fail_open", "error": type(exc).__name__},
            )
            return await self._fall_back(item, key)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return RateLimitDecision(allowed, item.amount, stats.remaining, reset)

    async def _fall_back(
        self, item: RateLimitItem, key: tuple[str, ...]
    ) -> RateLimitDecision | None:
        if self.fallback is None:
            return None
        return await self.fallback.hit(item, *key)


class EmailThrottle:
    """Per-recipient limits of the emails anyone can make the service send.

    A password-reset link goes to whatever address was typed, a verification
    link on every request: without a limit, a script floods a mailbox (and
    the service's sending reputation) at the rate of the API.
    """

    def __init__(self, limiter: RateLimiter, limits: dict[str, str]) -> None:
        """Count in `limiter`; `limits` maps an email kind to its limit string."""
        self.limiter = limiter
        self.limits = limits

    async def allows(self, kind: str, user_id: int) -> bool:
        """Count one email of `kind` to the user; False once over the limit."""
        decision = await self.limiter.hit(self.limits[kind], kind, f"user:{user_id}")
        if decision is None or decision.allowed:
            return True
        logger.info(
            "email not sent: too many for this recipient",
            extra={"event": "email_throttled", "kind": kind, "user_id": user_id},
        )
        return False
