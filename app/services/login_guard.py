"""Brute-force protection: per-account lockout with growing wait, per-IP ceiling."""

from __future__ import annotations

import hashlib
import logging
import math
import time

from app.core.attempts import LoginAttemptStore
from app.core.config import Settings
from app.core.exceptions import AccountLockedError, TooManyRequestsError

security_log = logging.getLogger("app.security")


def _fingerprint(account: str) -> str:
    # The attempted login may be a mistyped password: log only a short digest.
    return hashlib.sha256(account.encode()).hexdigest()[:16]


class LoginGuard:
    """Decide whether a login may be attempted, and count the failures."""

    def __init__(self, store: LoginAttemptStore, settings: Settings) -> None:
        """Use `store` for the counters and `settings` for the policy."""
        self.store = store
        self.settings = settings

    @staticmethod
    def account_key(user_id: int | None, identifier: str) -> str:
        """Counter key of an account: its id when known, else the login typed.

        Keying known accounts by id means email and username share one counter.
        """
        if user_id is not None:
            return f"user:{user_id}"
        return "login:" + identifier.strip().lower()

    @staticmethod
    def ip_key(ip: str | None) -> str:
        """Counter key of a client address."""
        return f"ip:{ip or 'unknown'}"

    async def check(self, account: str, ip: str | None) -> None:
        """Refuse the attempt when the account or the client IP is locked.

        Raises:
            AccountLockedError: The account is locked (429 with Retry-After).
            TooManyRequestsError: This IP failed too often within the window.
        """
        now = time.time()
        state = await self.store.get(account, now)
        if state.locked_until > now:
            raise AccountLockedError(math.ceil(state.locked_until - now))
        client = await self.store.get(self.ip_key(ip), now)
        if client.locked_until > now:
            raise TooManyRequestsError(
                math.ceil(client.locked_until - now),
                "Too many failed login attempts from this address",
            )

    async def record_failure(self, account: str, ip: str | None, reason: str) -> None:
        """Count a failure for the account and the IP; lock when over the limits."""
        now = time.time()
        settings = self.settings
        window = settings.LOGIN_FAILURE_WINDOW_SECONDS
        failures = await self.store.add_failure(account, now, window)
        if failures >= settings.LOGIN_MAX_FAILURES:
            # Keycloak-style: each failure beyond the threshold doubles the wait.
            extra = failures - settings.LOGIN_MAX_FAILURES
            wait = min(
                settings.LOGIN_LOCKOUT_BASE_SECONDS * 2 ** min(extra, 20),
                settings.LOGIN_LOCKOUT_MAX_SECONDS,
            )
            await self.store.lock(account, now + wait)
        ip_failures = await self.store.add_failure(self.ip_key(ip), now, window)
        if ip_failures >= settings.LOGIN_IP_MAX_FAILURES:
            await self.store.lock(self.ip_key(ip), now + window)
        security_log.warning(
            "login_failed",
            extra={
                "event": "login_failed",
                "reason": reason,
                "account_fingerprint": _fingerprint(account),
                "client_ip": ip,
                "account_failures": failures,
            },
        )

    async def record_success(self, account: str) -> None:
        """A successful login clears the account's counter."""
        await self.store.reset(account)
