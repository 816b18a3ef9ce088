"""Password hashing: argon2id with OWASP parameters; bcrypt still verifies."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.cpus import available_cpus
from app.core.security import PasswordHasher
from tests.conftest import make_settings

hasher = PasswordHasher(make_settings())


async def test_hash_is_argon2id_with_configured_cost() -> None:
    hashed = await hasher.hash("Correct-Horse-9")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await hasher.verify_and_update("Correct-Horse-9", hashed) == (True, None)


async def test_wrong_password_does_not_verify() -> None:
    hashed = hasher.hash_sync("Correct-Horse-9")
    valid, _ = await hasher.verify_and_update("correct-horse-9", hashed)
    assert valid is False


async def test_legacy_bcrypt_hash_verifies_and_is_upgraded() -> None:
    legacy = BcryptHasher().hash("Legacy-Pass-1")
    valid, upgraded = await hasher.verify_and_update("Legacy-Pass-1", legacy)
    assert valid is True
    assert upgraded is not None
    assert upgraded.startswith("$argon2id$")


async def test_same_password_hashes_differently() -> None:
    assert hasher.hash_sync("Same-Pass-1") != hasher.hash_sync("Same-Pass-1")


class _Watched:
    """The real hash, watched: which threads run it, how many at once."""

    def __init__(self, hasher: PasswordHasher) -> None:
        self.real = hasher._hash
        self.threads: set[str] = set()
        self.running = 0
        self.peak = 0
        self.started = threading.Event()
        self.lock = threading.Lock()

    def verify_and_update(self, password: str, hashed: str) -> Any:
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.started.set()
        try:
            return self.real.verify_and_update(password, hashed)
        finally:
            with self.lock:
                self.running -= 1


async def test_one_hash_thread_per_cpu_by_default() -> None:
    assert make_settings().PASSWORD_HASH_THREADS == 0
    default = PasswordHasher(make_settings())
    hashed = default.hash_sync("Correct-Horse-9")
    watched = _Watched(default)
    default._hash = watched  # type: ignore[assignment]
    calls = 2 * available_cpus() + 1
    try:
        await asyncio.gather(
            *(
                default.verify_and_update("Correct-Horse-9", hashed)
                for _ in range(calls)
            )
        )
    finally:
        default.close()
    assert watched.peak == default.threads == available_cpus()


async def test_hashes_run_on_the_pools_threads_never_more_than_configured() -> None:
    pooled = PasswordHasher(make_settings(PASSWORD_HASH_THREADS=2))
    hashed = pooled.hash_sync("Correct-Horse-9")
    watched = _Watched(pooled)
    pooled._hash = watched  # type: ignore[assignment]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(
            *(pooled.verify_and_update("Correct-Horse-9", hashed) for _ in range(6))
        )
    finally:
        ticking.cancel()
        pooled.close()

    assert results == [(True, None)] * 6
    assert watched.peak == 2
    assert watched.threads
    assert all(name.startswith("password-hash") for name in watched.threads)
    assert ticks >= 3  # three rounds of hashes, and the event loop kept running


async def test_closing_drops_the_hashes_still_queued() -> None:
    single = PasswordHasher(make_settings(PASSWORD_HASH_THREADS=1))
    hashed = single.hash_sync("Correct-Horse-9")
    watched = _Watched(single)
    single._hash = watched  # type: ignore[assignment]
    calls = [
        asyncio.ensure_future(single.verify_and_update("Correct-Horse-9", hashed))
        for _ in range(3)
    ]
    await asyncio.to_thread(watched.started.wait, 5)

    single.close()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    assert outcomes[0] == (True, None)  # the running one finishes
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes[1:])
