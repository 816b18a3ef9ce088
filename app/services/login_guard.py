"""Brute-force protection: per-account lockout with growing wait, per-IP ceiling."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from app.core.attempts import LockoutPolicy, LoginAttemptStore, Outcome, Verdict
from app.core.config import Settings
from app.core.exceptions import AccountLockedError, TooManyRequestsError

security_log = logging.getLogger("app.security")

BUSY_WAIT_SECONDS = 2.0
"""How long an attempt waits for a free slot before a retryable 429.

Attempts under way end within a password check (tens of milliseconds), so
concurrent right passwords (two tabs, a retried request) all get in.
"""


@dataclass(slots=True)
class Attempt:
    """One admitted login attempt, holding a slot of its account until it ends."""

    account: str
    ip: str | None
    id: str
    ended: bool = False


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

    @asynccontextmanager
    async def attempt(self, account: str, ip: str | None) -> AsyncIterator[Attempt]:
        """Let one attempt on `account` from `ip` check a password, or refuse it.

        The attempt takes one of the account's slots (as many as failures are
        still allowed) until it ends: a burst of concurrent guesses gets no
        more tries than guesses sent one by one, and attempts under way are
        not failures, so a burst of right passwords locks nothing. An attempt
        that finds every slot taken waits for one, up to `BUSY_WAIT_SECONDS`.
        The block ends the attempt with `record_failure` or `record_success`;
        one that leaves without either (an error, a disabled account) frees
        its slot without counting.

        Raises:
            TooManyRequestsError: This IP failed too often within the window,
                or the account's slots stayed taken (retry after a second).
            AccountLockedError: The account is locked (429 with Retry-After).
        """
        attempt = await self._admit(account, ip)
        try:
            yield attempt
        finally:
            if not attempt.ended:
                await self._end(attempt, Outcome.RELEASED)

    async def _admit(self, account: str, ip: str | None) -> Attempt:
        now = time.time()
        client = await self.store.get(self.ip_key(ip), now)
        if client.locked_until > now:
            raise TooManyRequestsError(
                math.ceil(client.locked_until - now),
                "Too many failed login attempts from this address",
            )
        attempt = Attempt(account, ip, uuid.uuid4().hex)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + BUSY_WAIT_SECONDS, 0.01
        while True:
            now = time.time()
            admission = await self.store.begin_attempt(
                account, attempt.id, now, self.policy
            )
            if admission.verdict is Verdict.ADMITTED:
                return attempt
            if admission.verdict is Verdict.LOCKED:
                raise AccountLockedError(math.ceil(admission.locked_until - now))
            if loop.time() + pause > deadline:
                raise TooManyRequestsError(
                    1, "Other login attempts for this account are under way"
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def _end(self, attempt: Attempt, outcome: Outcome) -> int:
        attempt.ended = True
        return await self.store.end_attempt(
            attempt.account, attempt.id, time.time(), self.policy, outcome
        )

    async def record_failure(self, attempt: Attempt, reason: str) -> None:
        """Count the attempt as a failure of its account and its IP.

        Args:
            attempt: What `attempt` yielded.
            reason: Why it failed, for the security log.
        """
        failures = await self._end(attempt, Outcome.FAILED)
        now = time.time()
        window = self.settings.LOGIN_FAILURE_WINDOW_SECONDS
        ip_key = self.ip_key(attempt.ip)
        ip_failures = await self.store.add_failure(ip_key, now, window)
        if ip_failures >= self.settings.LOGIN_IP_MAX_FAILURES:
            await self.store.lock(ip_key, now + window)
        security_log.warning(
            "login_failed",
            extra={
                "event": "login_failed",
                "reason": reason,
                "account_fingerprint": _fingerprint(attempt.account),
                "client_ip": attempt.ip,
                "account_failures": failures,
            },
        )

    async def record_success(self, attempt: Attempt) -> None:
        """A right password clears the account's failures and lock."""
        await self._end(attempt, Outcome.SUCCEEDED)

    async def reset(self, account: str) -> None:
        """Clear the account's failures and lock (e.g. after a password reset)."""
        await self.store.reset(account)
