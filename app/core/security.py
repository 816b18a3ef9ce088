"""Password hashing: argon2id (OWASP parameters) via pwdlib; bcrypt still verifies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import TypeVar

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.config import Settings
from app.core.cpus import available_cpus

T = TypeVar("T")


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


class PasswordHasher:
    """Hash and verify passwords off the event loop, on a pool of its own threads.

    One thread per usable CPU by default (`PASSWORD_HASH_THREADS`; a
    container's CPU quota counts, see `app.core.cpus`): hashing is
    CPU-bound, so more threads only take turns on the same cores. Hashes that
    must wait queue inside the pool, so a thread that finishes one starts the
    next at once; with anyio's limiter the next one waited for the event loop
    to hand it over, and under load the loop is busy. On two cores this gave
    both more hashes per second alone and more logins per second than four
    anyio threads (see issue 7's note).
    """

    def __init__(self, settings: Settings) -> None:
        """Configure from settings (argon2id cost, worker threads)."""
        self._hash = _password_hash(
            settings.PASSWORD_ARGON2_TIME_COST,
            settings.PASSWORD_ARGON2_MEMORY_KIB,
            settings.PASSWORD_ARGON2_PARALLELISM,
        )
        # Threads start on first use, so an unused hasher costs nothing.
        self.threads = settings.PASSWORD_HASH_THREADS or available_cpus()
        self._pool = ThreadPoolExecutor(
            self.threads, thread_name_prefix="password-hash"
        )
        self._dummy_hash: str | None = None

    async def _in_pool(self, work: Callable[..., T], *args: str) -> T:
        # A caller cancelled while its hash waits in the queue takes it out.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, work, *args)

    def close(self) -> None:
        """Stop the threads (application shutdown); queued hashes are dropped."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def hash_sync(self, password: str) -> str:
        """Hash on the calling thread (CLI, tests)."""
        return self._hash.hash(password)

    async def hash(self, password: str) -> str:
        """Hash `password` with argon2id without blocking the event loop."""
        return await self._in_pool(self._hash.hash, password)

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
        return await self._in_pool(self._hash.verify_and_update, password, hashed)

    async def burn_verify_time(self, password: str) -> None:
        """Spend one verification's time on a dummy hash (unknown accounts).

        Login for an unknown account then costs what it costs for a known one,
        so response time does not reveal which accounts exist.
        """
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash("dummy-password-for-timing-0")
        await self.verify_and_update(password, self._dummy_hash)
