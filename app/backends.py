"""Backends chosen by settings: Redis or in-process, SMTP or a mail folder."""

from __future__ import annotations

import math
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.core.attempts import (
    FallbackLoginAttemptStore,
    InMemoryLoginAttemptStore,
    LoginAttemptStore,
    RedisLoginAttemptStore,
)
from app.core.cache import AuthCache, MemoryAuthCache, RedisAuthCache
from app.core.config import Settings
from app.core.email import EmailTransport, SmtpConfig, build_transport
from app.core.ratelimit import EmailThrottle, RateLimiter, storage_for
from app.services.handlers import EMAIL_VERIFICATION, PASSWORD_RESET


class FailFastRedis(Redis):
    """A client that, once Redis has failed, fails at once for a few seconds.

    Every caller has a fallback for Redis being down (the database, a
    per-process counter, the outbox). Without this each request still waited
    out a timeout per Redis call first when Redis hung (login took 7 s).
    """

    retry_after_seconds = 5.0
    _down_until = 0.0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run a command, or raise `ConnectionError` while Redis counts as down."""
        if time.monotonic() < self._down_until:
            raise RedisConnectionError("Redis failed moments ago; not retried yet")
        try:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError):
            self._down_until = time.monotonic() + self.retry_after_seconds
            raise


def redis_client(settings: Settings) -> Redis | None:
    """A Redis client when `REDIS_URL` is set (connects lazily), else None."""
    if not settings.REDIS_URL:
        return None
    return FailFastRedis.from_url(
        settings.REDIS_URL,
        decode_responses=True,
        socket_connect_timeout=1.0,
        socket_timeout=settings.REDIS_SOCKET_TIMEOUT_SECONDS,
        health_check_interval=15,
    )


def smtp_config(settings: Settings) -> SmtpConfig | None:
    """SMTP settings, or None when `SMTP_HOST` is empty (development folder)."""
    if not settings.SMTP_HOST:
        return None
    return SmtpConfig(
        host=settings.SMTP_HOST,
        port=settings.SMTP_PORT,
        user=settings.SMTP_USER or None,
        password=settings.SMTP_PASSWORD.get_secret_value()
        if settings.SMTP_PASSWORD
        else None,
        use_tls=settings.SMTP_TLS and not settings.SMTP_SSL,
        use_ssl=settings.SMTP_SSL,
        from_email=settings.EMAILS_FROM_EMAIL,
        from_name=settings.EMAILS_FROM_NAME,
        timeout_seconds=settings.SMTP_TIMEOUT_SECONDS,
    )


def email_transport(settings: Settings) -> EmailTransport:
    """The mail transport the settings describe."""
    return build_transport(
        smtp_config(settings),
        settings.MAIL_DIR,
        from_email=settings.EMAILS_FROM_EMAIL,
        from_name=settings.EMAILS_FROM_NAME,
    )


def email_throttle(settings: Settings) -> EmailThrottle:
    """Per-recipient email limits: in Redis (per process while it fails), or local."""
    local = RateLimiter(storage_for(None), enabled=True, prefix="mail")
    limiter = local
    if settings.REDIS_URL:
        limiter = RateLimiter(
            storage_for(settings.REDIS_URL),
            enabled=True,
            prefix=f"{settings.REDIS_KEY_PREFIX}mail",
            fallback=local,
        )
    limits = {
        PASSWORD_RESET: settings.PASSWORD_RESET_EMAIL_LIMIT,
        EMAIL_VERIFICATION: settings.VERIFICATION_EMAIL_LIMIT,
    }
    return EmailThrottle(limiter, limits)


def login_attempt_store(settings: Settings, redis: Redis | None) -> LoginAttemptStore:
    """Brute-force counters: Redis (falling back per process) or in-process."""
    local = InMemoryLoginAttemptStore()
    if redis is None:
        return local
    # Keys must outlive both the counting window and the longest lock.
    retention = math.ceil(
        max(settings.LOGIN_FAILURE_WINDOW_SECONDS, settings.LOGIN_LOCKOUT_MAX_SECONDS)
    )
    remote = RedisLoginAttemptStore(redis, settings.REDIS_KEY_PREFIX, retention)
    return FallbackLoginAttemptStore(remote, local)


def auth_cache(settings: Settings, redis: Redis | None) -> AuthCache:
    """The access-check cache: shared in Redis, or in this process."""
    if redis is None:
        return MemoryAuthCache(settings.AUTH_CACHE_TTL_SECONDS)
    return RedisAuthCache(
        redis, settings.REDIS_KEY_PREFIX, settings.AUTH_CACHE_TTL_SECONDS
    )
