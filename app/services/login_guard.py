"""Brute-force protection: per-account lockout with growing wait, per-IP ceiling."""

from __future__ import annotations

import hashlib
import logging
import math
import time

from app.core.attempts import LockoutPolicy, LoginAttemptStore
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
        self.policy = LockoutPolicy(
            window=settings.LOGIN_FAILURE_WINDOW_SECONDS,
            max_failures=settings.LOGIN_MAX_FAILURES,
            base_seconds=settings.LOGIN_LOCKOUT_BASE_SECONDS,
            max_seconds=settings.LOGIN_LOCKOUT_MAX_SECONDS,
        )

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

    async def admit(self, account: str, ip: str | None) -> int:
        """Let one attempt on `account` from `ip` check a password, or refuse it.

        The attempt is counted as a failure before the password is checked,
        and the lock that failure would earn is set already (a success clears
        both, `record_success`): a burst of concurrent guesses gets no more
        tries than guesses sent one by one. An attempt that never finishes
        (cancelled, crashed) stays counted: the guard errs towards locking.

        Returns:
            The account's failures in the window, this attempt included.

        Raises:
            TooManyRequestsError: This IP failed too often within the window.
            AccountLockedError: The account is locked (429 with Retry-After).
        """
        now = time.time()
        client = await self.store.get(self.ip_key(ip), now)
        if client.locked_until > now:
            raise TooManyRequestsError(
                math.ceil(client.locked_until - now),
                "Too many failed login attempts from this address",
            )
        admission = await self.store.begin_attempt(account, now, self.policy)
        if not admission.admitted:
            raise AccountLockedError(math.ceil(admission.locked_until - now))
        return admission.failures

    async def record_failure(
        self, account: str, ip: str | None, reason: str, failures: int
    ) -> None:
        """Count the failure for the IP (the account's was counted by `admit`).

        Args:
            account: The account key.
            ip: The client address.
            reason: Why it failed, for the security log.
            failures: What `admit` returned for this attempt.
        """
        now = time.time()
        window = self.settings.LOGIN_FAILURE_WINDOW_SECONDS
        ip_failures = await self.store.add_failure(self.ip_key(ip), now, window)
        if ip_failures >= self.settings.LOGIN_IP_MAX_FAILURES:
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
        """A successful login clears the account's counter and provisional lock."""
        await self.store.reset(account)
