"""Password hashing: argon2id (OWASP parameters) via pwdlib; bcrypt still verifies."""

from __future__ import annotations

from functools import lru_cache

import anyio
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.config import Settings


@lru_cache(maxsize=4)
def _password_hash(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHash:
    # The first hasher hashes; the others only verify old hashes (and flag rehash).
    return PasswordHash(
        (
            Argon2Hasher(
                time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
            ),
            BcryptHasher(),
        )
    )


@lru_cache(maxsize=4)
def _limiter(threads: int) -> anyio.CapacityLimiter:
    return anyio.CapacityLimiter(threads)


class PasswordHasher:
    """Hash and verify passwords off the event loop, in a bounded thread pool."""

    def __init__(self, settings: Settings) -> None:
        """Configure from settings (argon2id cost, worker threads)."""
        self._hash = _password_hash(
            settings.PASSWORD_ARGON2_TIME_COST,
            settings.PASSWORD_ARGON2_MEMORY_KIB,
            settings.PASSWORD_ARGON2_PARALLELISM,
        )
        self._threads = settings.PASSWORD_HASH_THREADS
        self._dummy_hash: str | None = None

    def hash_sync(self, password: str) -> str:
        """Hash on the calling thread (CLI, tests)."""
        return self._hash.hash(password)

    async def hash(self, password: str) -> str:
        """Hash `password` with argon2id without blocking the event loop."""
        return await anyio.to_thread.run_sync(
            self._hash.hash, password, limiter=_limiter(self._threads)
        )

    async def verify_and_update(
        self, password: str, hashed: str
    ) -> tuple[bool, str | None]:
        """Verify `password`; return a new argon2id hash when the old one is outdated.

        Args:
            password: The plain password.
            hashed: The stored hash (argon2id or legacy bcrypt).

        Returns:
            (valid, new_hash or None).
        """
        return await anyio.to_thread.run_sync(
            self._hash.verify_and_update,
            password,
            hashed,
            limiter=_limiter(self._threads),
        )

    async def burn_verify_time(self, password: str) -> None:
        """Spend one verification's time on a dummy hash (unknown accounts).

        Login for an unknown account then costs what it costs for a known one,
        so response time does not reveal which accounts exist.
        """
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash("dummy-password-for-timing-0")
        await self.verify_and_update(password, self._dummy_hash)
