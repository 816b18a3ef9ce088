"""How fast one process computes the configured argon2id hash, nothing else.

`python -m bench.argon2_rate SECONDS CONCURRENCY` runs with the service's
environment: the app's `PasswordHasher` with the production settings verifies
one password against its hash (what login costs), from `CONCURRENCY` tasks
through the hasher's own pool of `PASSWORD_HASH_THREADS` threads, for
`SECONDS`, and prints the rate as JSON. Login is reported as a ratio to it.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from app.core.config import get_settings
from app.core.security import PasswordHasher

PASSWORD = "Bench-Passw0rd-argon2"  # noqa: S105 - a throwaway benchmark password


async def measure(hasher: PasswordHasher, seconds: float, concurrency: int) -> float:
    """Verifications per second over `seconds` with `concurrency` callers.

    Args:
        hasher: The app's hasher (argon2id cost and threads from the settings).
        seconds: How long to measure.
        concurrency: Verifications requested at once (like logins in flight).

    Returns:
        Completed verifications per second.
    """
    hashed = hasher.hash_sync(PASSWORD)
    await hasher.verify_and_update(PASSWORD, hashed)  # start the thread pool
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            valid, _ = await hasher.verify_and_update(PASSWORD, hashed)
            if not valid:
                raise RuntimeError("argon2id verification failed")
            done += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        hasher.close()
    return done / (time.perf_counter() - started)


def main(argv: list[str]) -> int:
    """Print `{"rate": ..., "threads": ..., ...}` for `argv` = [seconds, concurrency]."""
    settings = get_settings()
    hasher = PasswordHasher(settings)
    rate = asyncio.run(measure(hasher, float(argv[0]), int(argv[1])))
    report = {
        "rate": rate,
        "threads": hasher.threads,
        "time_cost": settings.PASSWORD_ARGON2_TIME_COST,
        "memory_kib": settings.PASSWORD_ARGON2_MEMORY_KIB,
        "parallelism": settings.PASSWORD_ARGON2_PARALLELISM,
    }
    sys.stdout.write(orjson.dumps(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
